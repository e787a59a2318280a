"""The pass-through proxy behind the inference routes.

Validates the request (400/404/413 in the OpenAI shape), picks the configured backend, forwards the
client's own body bytes (so unknown fields reach the upstream unchanged) and relays the upstream's answer
without re-serialising it: whole for plain requests, event by event for streams. A stream that breaks
ends with an error frame and ``data: [DONE]``; a client that goes away cancels the upstream request.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable
from typing import TypeVar

import orjson
from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse

from gateway import metrics
from gateway.auth import ApiKeyAuth
from gateway.context import RequestContext, get_context
from gateway.errors import (
    BadRequest,
    ClientDisconnected,
    GatewayError,
    ModelNotFound,
    PayloadTooLarge,
    UpstreamBroken,
    error_body,
    error_frame,
    from_validation_error,
)
from gateway.inference.schemas import ChatCompletionRequest, CompletionRequest, ModelCard, ModelList
from gateway.sse import DONE, EventAligner, contains_done
from gateway.upstream.backend import RemoteBackend, UpstreamResult, UpstreamStream

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R", bound=BaseModel)

#: Arm of every request until the helpers exist in the pipeline.
DEFAULT_ARM = "control"
_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing more than ``limit`` bytes (413) without reading them all."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise BadRequest("Invalid Content-Length header.") from None
        if size > limit:
            raise PayloadTooLarge(f"Request body of {size} bytes exceeds the limit of {limit} bytes.")
    chunks: list[bytes] = []
    total = 0
    try:
        async for chunk in request.stream():
            total += len(chunk)
            if total > limit:
                raise PayloadTooLarge(f"Request body exceeds the limit of {limit} bytes.")
            chunks.append(chunk)
    except ClientDisconnect:
        raise ClientDisconnected() from None
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def parse_request(raw: bytes, schema: type[R]) -> R:
    if not raw:
        raise BadRequest("Request body is empty; expected a JSON object.", code="invalid_json")
    try:
        return schema.model_validate_json(raw)
    except ValidationError as exc:
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise from_validation_error(exc) from None
        raise from_validation_error(exc, data) from None


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


class InferenceService:
    """Serves the OpenAI routes over the configured backends (one instance per worker process)."""

    def __init__(
        self,
        backends: dict[str, RemoteBackend],
        auth: ApiKeyAuth,
        *,
        max_body_bytes: int,
        log_request_bodies: bool = False,
    ) -> None:
        self.backends = backends
        self.auth = auth
        self.max_body_bytes = max_body_bytes
        self.log_request_bodies = log_request_bodies
        self.created = int(time.time())

    def models(self, request: Request) -> ModelList:
        self.auth.check(request.headers.get("authorization"))
        return ModelList(data=[ModelCard(id=name, created=self.created) for name in self.backends])

    async def chat(self, request: Request) -> Response:
        raw, req = await self._read(request, ChatCompletionRequest)
        return await self._proxy(request, raw, req, "/chat/completions")

    async def completions(self, request: Request) -> Response:
        raw, req = await self._read(request, CompletionRequest)
        if not req.has_prompt():
            raise BadRequest("Missing required parameter: 'prompt'.", param="prompt", code="missing_required_parameter")
        return await self._proxy(request, raw, req, "/completions")

    async def _read(self, request: Request, schema: type[R]) -> tuple[bytes, R]:
        self.auth.check(request.headers.get("authorization"))
        raw = await read_body(request, self.max_body_bytes)
        req = parse_request(raw, schema)
        if self.log_request_bodies:
            logger.debug("request %s body: %s", get_context(request).request_id, raw.decode("utf-8", "replace"))
        return raw, req

    async def _proxy(
        self, request: Request, raw: bytes, req: ChatCompletionRequest | CompletionRequest, path: str
    ) -> Response:
        backend = self.backends.get(req.model)
        if backend is None:
            raise ModelNotFound(
                f"The model '{req.model}' does not exist; GET /v1/models lists the served models.", param="model"
            )
        ctx = get_context(request)
        ctx.model = backend.name
        ctx.arm = DEFAULT_ARM
        ctx.stream = bool(req.stream)
        metrics.request_started(ctx)
        upstream_model = backend.settings.upstream_model
        body = raw if upstream_model is None else _with_model(raw, upstream_model)
        if ctx.stream:
            return await self._stream(request, ctx, backend, path, body)
        t = time.perf_counter()
        try:
            result = await _until_disconnect(request, backend.fetch(path, body))
        finally:
            ctx.upstream_s += time.perf_counter() - t
        ctx.replica = result.replica
        return relay_result(result)

    async def _stream(
        self, request: Request, ctx: RequestContext, backend: RemoteBackend, path: str, body: bytes
    ) -> Response:
        t = time.perf_counter()
        try:
            opened = await _until_disconnect(request, backend.open_stream(path, body))
        finally:
            ctx.upstream_s += time.perf_counter() - t
        ctx.replica = opened.replica if isinstance(opened, UpstreamResult) else opened.replica.index
        if isinstance(opened, UpstreamResult):  # the upstream refused before streaming: plain JSON error
            return relay_result(opened)
        return StreamingResponse(_relay(ctx, opened), media_type="text/event-stream", headers=_SSE_HEADERS)


async def _relay(ctx: RequestContext, upstream: UpstreamStream) -> AsyncIterator[bytes]:
    """Upstream SSE bytes re-cut on event boundaries; a failure becomes an error frame, then ``[DONE]``."""
    aligner = EventAligner()
    done = False
    try:
        async for chunk in upstream.chunks():
            out = aligner.feed(chunk)
            if out:
                if not done and contains_done(out):
                    done = True
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


def _with_model(raw: bytes, model: str) -> bytes:
    """The body with ``model`` replaced. The stdlib codec keeps every other value exact (orjson would turn
    integers beyond 64 bits into floats); it only runs for backends with ``upstream_model`` set."""
    data = json.loads(raw)
    data["model"] = model
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()


async def _until_disconnect(request: Request, aw: Awaitable[T]) -> T:
    """Await ``aw``, cancelling it if the client disconnects meanwhile (then ``ClientDisconnected``).

    Call only once the request body has been read: from then on the ASGI ``receive`` channel only ever
    reports the disconnect.
    """
    task = asyncio.current_task()
    assert task is not None
    fired = False

    async def watch() -> None:
        nonlocal fired
        while (await request.receive())["type"] != "http.disconnect":
            pass
        fired = True
        task.cancel()

    watcher = asyncio.get_running_loop().create_task(watch())
    try:
        return await aw
    except asyncio.CancelledError:
        if fired:
            task.uncancel()
            raise ClientDisconnected() from None
        raise
    finally:
        watcher.cancel()
