"""Relaying an upstream's answer to the client: whole (errors normalised to the OpenAI shape) or as SSE.

Both keep the upstream's bytes untouched on success; a stream is re-cut on event boundaries only, and a
stream that breaks ends with an error frame and ``data: [DONE]``. ``StreamRelay`` sends the control arm's
stream as an ASGI response; a client that goes away cancels it, and with it the upstream request.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator

import orjson
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from gateway.context import RequestContext
from gateway.errors import ClientDisconnected, GatewayError, UpstreamBroken, error_body, error_frame
from gateway.inference.receive import until_disconnect
from gateway.upstream.protocol import StreamHandle, UpstreamResult
from models.wire.sse import DONE, EventAligner, contains_done, insert_before_done

logger = logging.getLogger(__name__)

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
#: The response headers of a relayed stream: those Starlette's ``StreamingResponse`` sends for
#: ``media_type="text/event-stream", headers=SSE_HEADERS`` (as the pipeline's streams send them).
SSE_RAW_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
    (b"content-type", b"text/event-stream; charset=utf-8"),
)


def normalize_error_body(status: int, body: bytes) -> bytes:
    """An upstream error body in the OpenAI shape: relayed as-is when it already is, wrapped otherwise."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        text = body.decode("utf-8", "replace").strip()[:1000] or f"Upstream answered HTTP {status}."
        return orjson.dumps(error_body(text, "upstream_error", None, status))
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict):
            return body
        if isinstance(error, str) and error:
            return orjson.dumps(error_body(error[:1000], "upstream_error", None, status))
        if "message" in data:  # vLLM's older ErrorResponse: {"object": "error", "message", "type", "code"}
            return orjson.dumps(
                error_body(str(data["message"]), str(data.get("type") or "upstream_error"), data.get("param"),
                           data.get("code", status))
            )
    return orjson.dumps(error_body(f"Upstream answered HTTP {status}.", "upstream_error", None, status))


def relay_result(result: UpstreamResult) -> Response:
    body = result.body if result.status < 400 else normalize_error_body(result.status, result.body)
    media_type = result.content_type if result.status < 400 else "application/json"
    return Response(body, status_code=result.status, media_type=media_type or "application/json")


async def relay_stream(
    ctx: RequestContext, upstream: StreamHandle, tail: bytes | None = None
) -> AsyncGenerator[bytes, None]:
    """Upstream SSE bytes re-cut on event boundaries; a failure becomes an error frame, then ``[DONE]``.

    ``tail``, when given, is one more event inserted just before ``[DONE]`` (the pipeline's trace chunk).
    """
    aligner = EventAligner()
    done = False
    capture = ctx.capture
    try:
        async for chunk in upstream.chunks():
            out = aligner.feed(chunk)
            if out:
                if not done and contains_done(out):
                    done = True
                    if tail is not None:
                        out = insert_before_done(out, tail)
                if capture is not None:
                    capture.add_chunk(out)
                yield out
        if not done:
            raise UpstreamBroken(f"Backend '{ctx.model}' ended the stream without [DONE].")
    except GatewayError as exc:
        if not done:
            ctx.outcome = exc.code
            logger.warning("request %s: stream from %s failed: %s", ctx.request_id, ctx.model, exc.message)
            yield error_frame(exc) + DONE
    except asyncio.CancelledError:
        ctx.outcome = "client_disconnected"
        raise
    finally:
        ctx.upstream_s += upstream.waited_s
        upstream.close()


class StreamRelay:
    """The control arm's streamed answer as an ASGI response: ``relay_stream``'s events, sent as they come.

    What Starlette's ``StreamingResponse`` does for it, with one watcher task for the client's disconnect
    instead of a task group: a client that goes away stops the relay (``outcome`` ``client_disconnected``)
    and closes the upstream stream, which aborts the upstream request.
    """

    __slots__ = ("ctx", "upstream")

    def __init__(self, ctx: RequestContext, upstream: StreamHandle) -> None:
        self.ctx = ctx
        self.upstream = upstream

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        events = relay_stream(self.ctx, self.upstream)
        try:
            await send({"type": "http.response.start", "status": 200, "headers": SSE_RAW_HEADERS})
            await until_disconnect(receive, _pump(events, send))
        except ClientDisconnected:
            self.ctx.outcome = "client_disconnected"
            return
        finally:
            await events.aclose()
            self.upstream.close()  # idempotent; for a relay that never started
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _pump(events: AsyncIterator[bytes], send: Send) -> None:
    async for piece in events:
        await send({"type": "http.response.body", "body": piece, "more_body": True})
