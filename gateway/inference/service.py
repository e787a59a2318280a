"""The inference service behind the OpenAI routes.

Validates the request (400/404/413 in the OpenAI shape), picks the configured backend and the arm. The
control arm (no trace asked) is a pure pass-through: the client's own body bytes go to the upstream (so
unknown fields arrive unchanged) and the upstream's answer comes back without re-serialisation, whole or
event by event. Every other arm runs the alignment pipeline (``gateway/pipeline``). A client that goes away
cancels the upstream request. The arm is the user's assignment (``X-Aligngate-User``, ``user``, the API key)
unless ``X-Aligngate-Arm`` forces one; a request with an arm gets a ``Capture`` that the trace store records
once the response has ended (references only on this path: the store's writer parses them later). In shadow
mode a sampled share of the assigned-control requests also get a shadow run of the helpers once their response
has been sent (``gateway/pipeline/shadow.py``); their response is the same.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Mapping
from typing import TypeVar

from pydantic import BaseModel
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse

from gateway import metrics
from gateway.auth import ApiKeyAuth
from gateway.config import ExperimentSettings, HelpersSettings
from gateway.context import Capture, RecordSink, RequestContext, get_context
from gateway.errors import (
    BadRequest,
    ClientDisconnected,
    ModelNotFound,
    PayloadTooLarge,
)
from gateway.inference.relay import SSE_HEADERS, relay_result, relay_stream
from gateway.inference.schemas import ChatCompletionRequest, CompletionRequest, ModelCard, ModelList, parse_request
from gateway.pipeline.arms import ARM_HEADER, USER_HEADER, ArmChooser, user_key
from gateway.pipeline.helpers import Helpers
from gateway.pipeline.pipeline import Pipeline, PipelineRequest
from gateway.pipeline.shadow import ShadowRunner
from gateway.upstream.protocol import Backend, UpstreamResult

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R", bound=BaseModel)

TRACE_HEADER = "x-aligngate-trace"


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


class InferenceService:
    """Serves the OpenAI routes over the configured backends (one instance per worker process)."""

    def __init__(
        self,
        backends: Mapping[str, Backend],
        auth: ApiKeyAuth,
        *,
        max_body_bytes: int,
        log_request_bodies: bool = False,
        arms: ArmChooser | None = None,
        pipeline: Pipeline | None = None,
        store: RecordSink | None = None,
        log_bodies: bool = True,
        shadow: ShadowRunner | None = None,
    ) -> None:
        self.backends = backends
        self.arms = arms or ArmChooser(ExperimentSettings(), HelpersSettings())
        self.pipeline = pipeline or Pipeline(Helpers(None, None))
        self.auth = auth
        self.max_body_bytes = max_body_bytes
        self.log_request_bodies = log_request_bodies
        self.created = int(time.time())
        #: The trace store every inference request is recorded in (None: nothing is recorded).
        self.store = store
        self.log_bodies = log_bodies
        #: Shadow mode (None: off, ``experiment.shadow.share`` 0); it records through the store, so needs one.
        self.shadow = shadow if store is not None else None

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
        headers = request.headers
        # The API key names a user only when keys are configured (without them every client's token is
        # whatever its SDK needed, often the same placeholder).
        key, source = user_key(headers.get(USER_HEADER), req.user,
                               headers.get("authorization") if self.auth.enabled else None)
        assignment = self.arms.choose(headers.get(ARM_HEADER), key)
        arm = assignment.arm
        ctx.arm = arm
        ctx.stream = bool(req.stream)
        if self.store is not None:
            ctx.capture = Capture(
                self.store, self.arms.experiment, "chat" if path == "/chat/completions" else "completions",
                self.log_bodies, assignment.forced, source, key, assignment.bucket,
                request_body=raw if self.log_bodies else None,
            )
            shadow = self.shadow
            if (shadow is not None and arm == "control" and not assignment.forced
                    and shadow.sampled(ctx.request_id)):
                # the response does not change; once it has been sent, the shadow run starts
                shadow.attach(ctx.capture, raw, path == "/chat/completions")
        metrics.request_started(ctx)
        trace_on = headers.get(TRACE_HEADER, "").strip().lower() in ("1", "true")
        if arm != "control" or trace_on:
            preq = PipelineRequest(ctx, backend, path, json.loads(raw), arm, trace_on)
            return await _until_disconnect(request, self.pipeline.run(preq))
        # The control arm: the client's bytes go up, the upstream's bytes come back.
        upstream_model = backend.upstream_model
        body = raw if upstream_model is None else _with_model(raw, upstream_model)
        if ctx.stream:
            return await self._stream(request, ctx, backend, path, body)
        t = time.perf_counter()
        try:
            result = await _until_disconnect(request, backend.fetch(path, body))
        finally:
            ctx.upstream_s += time.perf_counter() - t
        ctx.replica = result.replica
        if ctx.capture is not None:
            ctx.capture.response_body = result.body
        return relay_result(result)

    async def _stream(
        self, request: Request, ctx: RequestContext, backend: Backend, path: str, body: bytes
    ) -> Response:
        t = time.perf_counter()
        try:
            opened = await _until_disconnect(request, backend.open_stream(path, body))
        finally:
            ctx.upstream_s += time.perf_counter() - t
        ctx.replica = opened.replica if isinstance(opened, UpstreamResult) else opened.replica_index
        if isinstance(opened, UpstreamResult):  # the upstream refused before streaming: plain JSON error
            return relay_result(opened)
        return StreamingResponse(relay_stream(ctx, opened), media_type="text/event-stream", headers=SSE_HEADERS)


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
