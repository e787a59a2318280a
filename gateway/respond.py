"""Answering the client: an upstream's whole answer, an event stream, and the client's disconnect meanwhile.

* :func:`relay_result`: an upstream's whole answer as it came (an error body normalised to the OpenAI shape);
* :func:`relay_stream`: an upstream's SSE bytes re-cut on event boundaries only (never half an event or half a
  UTF-8 character); it stops reading at ``data: [DONE]``, and a stream that breaks before it ends with an error
  frame and ``data: [DONE]``;
* :class:`EventStream`: the one streamed response, whatever makes its events (a relayed upstream stream or a
  streamed correction). A client that goes away before ``[DONE]`` stops it (``outcome``
  ``client_disconnected``), and closing its events closes what produces them (the upstream request, the
  aligner). A client that hangs up after ``[DONE]`` has its whole answer: nothing is recorded as failed;
* :func:`upstream_headers`: what an upstream's response headers pass on to the client — everything but
  hop-by-hop and framing headers and those the gateway sets itself; the upstream's ``x-request-id`` becomes
  ``x-upstream-request-id`` (the gateway's own id stays ``x-request-id``);
* :func:`until_disconnect`: await an answer, cancelling it if the client goes away meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncGenerator, Awaitable, Iterable
from typing import TypeVar

import orjson
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from gateway.context import RequestContext
from gateway.errors import ClientDisconnected, GatewayError, UpstreamBroken, error_body, error_frame
from gateway.upstream.protocol import RawHeaders, StreamHandle, UpstreamResult
from models.wire.sse import DONE, EventAligner, contains_done, insert_before_done

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Headers of a streamed answer unless the upstream sent its own ``cache-control``.
SSE_CONTENT_TYPE = (b"content-type", b"text/event-stream; charset=utf-8")
_SSE_DEFAULTS: RawHeaders = ((b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no"))

#: Upstream response headers that are not passed on: hop-by-hop and framing (the gateway frames its own answer)
#: and those the gateway or its server set themselves.
_NOT_PASSED = frozenset({
    b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-connection", b"te", b"trailer",
    b"transfer-encoding", b"upgrade", b"content-length", b"content-encoding", b"content-type", b"date", b"server",
})


def upstream_headers(raw: Iterable[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The upstream's response headers to pass on (lower-case names), in their order."""
    out: list[tuple[bytes, bytes]] = []
    for name, value in raw:
        name = name.lower()
        if name in _NOT_PASSED or name.startswith(b"x-aligngate-"):
            continue
        if name == b"x-request-id":
            name = b"x-upstream-request-id"
        out.append((name, value))
    return out


def sse_headers(passed: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """A streamed answer's headers: the SSE defaults the upstream's passed-on ones do not override, the content
    type, then the passed-on ones (without any: what Starlette's ``StreamingResponse`` sends for SSE)."""
    if not passed:
        return [*_SSE_DEFAULTS, SSE_CONTENT_TYPE]
    names = {name for name, _ in passed}
    return [*(h for h in _SSE_DEFAULTS if h[0] not in names), SSE_CONTENT_TYPE, *passed]


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


#: What an upstream's error code must look like to become a request's ``outcome``.
_CODE = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,63}")


def relayed_outcome(body: bytes) -> str:
    """The ``outcome`` of a request answered with an upstream's error body (in the OpenAI shape): the error's
    ``code`` when it is a short identifier, else ``upstream_error``."""
    try:
        code = orjson.loads(body)["error"]["code"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return "upstream_error"
    return code if isinstance(code, str) and _CODE.fullmatch(code) else "upstream_error"


def relay_result(result: UpstreamResult, body: bytes | None = None) -> Response:
    """The upstream's whole answer: its status, content type, passed-on headers and ``body`` (default: its own
    bytes; an error body in the OpenAI shape)."""
    if result.status < 400:
        response = Response(result.body if body is None else body, status_code=result.status,
                            media_type=result.content_type or "application/json")
    else:
        response = Response(normalize_error_body(result.status, result.body), status_code=result.status,
                            media_type="application/json")
    if result.headers:
        response.raw_headers.extend(upstream_headers(result.headers))
    return response


async def relay_stream(
    ctx: RequestContext, upstream: StreamHandle, tail: bytes | None = None
) -> AsyncGenerator[bytes, None]:
    """Upstream SSE bytes re-cut on event boundaries, up to and including ``[DONE]``; a failure before it
    becomes an error frame, then ``[DONE]``. ``tail``, when given, is one more event inserted just before
    ``[DONE]`` (the trace chunk). What the upstream sends after ``[DONE]`` is not waited for."""
    aligner = EventAligner()
    capture = ctx.capture
    complete = False
    try:
        async for chunk in upstream.chunks():
            out = aligner.feed(chunk)
            if not out:
                continue
            complete = contains_done(out)
            if complete and tail is not None:
                out = insert_before_done(out, tail)
            if capture is not None:
                capture.add_chunk(out)
            yield out
            if complete:
                return
        raise UpstreamBroken(f"Backend '{ctx.model}' ended the stream without [DONE].")
    except GatewayError as exc:
        ctx.outcome = exc.code
        logger.warning("request %s: stream from %s failed: %s", ctx.request_id, ctx.model, exc.message)
        yield error_frame(exc) + DONE
    finally:
        upstream.close(complete=complete)


class EventStream:
    """A streamed (SSE) response: ``events`` sent as they come, then the end of the body.

    What Starlette's ``StreamingResponse`` does, with one watcher task for the client's disconnect instead of a
    task group. ``events`` ends with the piece that carries ``[DONE]``; a client that goes away before it stops
    the stream (``outcome`` ``client_disconnected``) and ``events`` is closed, which closes whatever produces it.
    """

    __slots__ = ("ctx", "events", "headers", "status")

    def __init__(
        self, ctx: RequestContext, events: AsyncGenerator[bytes, None],
        headers: list[tuple[bytes, bytes]] | None = None, status: int = 200,
    ) -> None:
        self.ctx = ctx
        self.events = events
        self.headers = sse_headers(headers or [])
        self.status = status

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        done = False

        async def pump() -> None:
            nonlocal done
            async for piece in self.events:
                await send({"type": "http.response.body", "body": piece, "more_body": True})
                if contains_done(piece):
                    done = True

        try:
            await send({"type": "http.response.start", "status": self.status, "headers": self.headers})
            await until_disconnect(receive, pump())
        except ClientDisconnected:
            if not done and self.ctx.outcome is None:
                self.ctx.outcome = "client_disconnected"
            return
        finally:
            await self.events.aclose()
        await send({"type": "http.response.body", "body": b"", "more_body": False})


#: How long an answer is awaited before the client's disconnect is watched for (seconds). Most answers of a
#: fast backend come sooner, and then no watcher task is made at all; a client that goes away earlier is
#: noticed at this point. Slow answers (LLM generations, streams) are watched for nearly all of their time.
WATCH_AFTER_S = 0.05


async def until_disconnect(receive: Receive, aw: Awaitable[T], watch_after_s: float = WATCH_AFTER_S) -> T:
    """Await ``aw``, cancelling it if the client disconnects meanwhile (then ``ClientDisconnected``).

    The watcher (a task waiting on ``receive``) starts once ``aw`` has taken ``watch_after_s``. Call only once the
    request body has been read: from then on the ASGI ``receive`` channel only ever reports the disconnect (or,
    once the response is complete, that it is over).
    """
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    fired = False
    watcher: asyncio.Task[None] | None = None

    async def watch() -> None:
        nonlocal fired
        while (await receive())["type"] != "http.disconnect":
            pass
        fired = True
        task.cancel()

    def start_watching() -> None:
        nonlocal watcher
        watcher = loop.create_task(watch())

    timer = loop.call_later(watch_after_s, start_watching)
    try:
        return await aw
    except asyncio.CancelledError:
        if fired:
            task.uncancel()
            raise ClientDisconnected() from None
        raise
    finally:
        timer.cancel()
        if watcher is not None:
            watcher.cancel()
