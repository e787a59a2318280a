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

import json
import logging
import time
from collections.abc import Mapping

from starlette.types import ASGIApp, Receive

from gateway import metrics
from gateway.auth import ApiKeyAuth
from gateway.config import ExperimentSettings, HelpersSettings
from gateway.context import Capture, RecordSink, RequestContext
from gateway.errors import BadRequest, ModelNotFound, parse_request
from gateway.inference.receive import RequestHeaders, read_body, until_disconnect
from gateway.inference.relay import StreamRelay, relay_result
from gateway.pipeline.arms import ArmChooser, user_key
from gateway.pipeline.helpers import Helpers
from gateway.pipeline.pipeline import Pipeline, PipelineRequest
from gateway.pipeline.shadow import ShadowRunner
from gateway.upstream.protocol import Backend, UpstreamResult
from models.wire.schemas import ChatCompletionRequest, CompletionRequest, ModelCard, ModelList

logger = logging.getLogger(__name__)

CHAT_PATH = "/chat/completions"
COMPLETIONS_PATH = "/completions"


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

    def models(self, authorization: str | None) -> ModelList:
        self.auth.check(authorization)
        return ModelList(data=[ModelCard(id=name, created=self.created) for name in self.backends])

    async def serve(self, ctx: RequestContext, path: str, headers: RequestHeaders, receive: Receive) -> ASGIApp:
        """Answer one inference request to ``path`` (``CHAT_PATH`` or ``COMPLETIONS_PATH``): the response to
        send, an ASGI app. Raises ``GatewayError`` (the OpenAI error to answer) and ``ClientDisconnected``."""
        self.auth.check(headers.authorization)
        raw = await read_body(receive, headers.content_length, self.max_body_bytes)
        req = parse_request(raw, ChatCompletionRequest) if path == CHAT_PATH else parse_request(raw, CompletionRequest)
        if self.log_request_bodies:
            logger.debug("request %s body: %s", ctx.request_id, raw.decode("utf-8", "replace"))
        if isinstance(req, CompletionRequest) and not req.has_prompt():
            raise BadRequest("Missing required parameter: 'prompt'.", param="prompt", code="missing_required_parameter")
        return await self._proxy(ctx, headers, receive, raw, req, path)

    async def _proxy(
        self, ctx: RequestContext, headers: RequestHeaders, receive: Receive, raw: bytes,
        req: ChatCompletionRequest | CompletionRequest, path: str,
    ) -> ASGIApp:
        backend = self.backends.get(req.model)
        if backend is None:
            raise ModelNotFound(
                f"The model '{req.model}' does not exist; GET /v1/models lists the served models.", param="model"
            )
        ctx.model = backend.name
        # The API key names a user only when keys are configured (without them every client's token is
        # whatever its SDK needed, often the same placeholder).
        key, source = user_key(headers.user, req.user, headers.authorization if self.auth.enabled else None)
        assignment = self.arms.choose(headers.arm, key)
        arm = assignment.arm
        ctx.arm = arm
        ctx.stream = bool(req.stream)
        if self.store is not None:
            ctx.capture = Capture(
                self.store, self.arms.experiment, "chat" if path == CHAT_PATH else "completions",
                self.log_bodies, assignment.forced, source, key, assignment.bucket,
                request_body=raw if self.log_bodies else None,
            )
            shadow = self.shadow
            if (shadow is not None and arm == "control" and not assignment.forced
                    and shadow.sampled(ctx.request_id)):
                # the response does not change; once it has been sent, the shadow run starts
                shadow.attach(ctx.capture, raw, path == CHAT_PATH)
        metrics.request_started(ctx)
        trace_on = headers.trace is not None and headers.trace.strip().lower() in ("1", "true")
        if arm != "control" or trace_on:
            preq = PipelineRequest(ctx, backend, path, json.loads(raw), arm, trace_on)
            return await until_disconnect(receive, self.pipeline.run(preq))
        # The control arm: the client's bytes go up, the upstream's bytes come back.
        upstream_model = backend.upstream_model
        body = raw if upstream_model is None else _with_model(raw, upstream_model)
        if ctx.stream:
            return await self._stream(ctx, receive, backend, path, body)
        t = time.perf_counter()
        try:
            result = await until_disconnect(receive, backend.fetch(path, body))
        finally:
            ctx.upstream_s += time.perf_counter() - t
        ctx.replica = result.replica
        if ctx.capture is not None:
            ctx.capture.response_body = result.body
        return relay_result(result)

    async def _stream(self, ctx: RequestContext, receive: Receive, backend: Backend, path: str, body: bytes) -> ASGIApp:
        t = time.perf_counter()
        try:
            opened = await until_disconnect(receive, backend.open_stream(path, body))
        finally:
            ctx.upstream_s += time.perf_counter() - t
        ctx.replica = opened.replica if isinstance(opened, UpstreamResult) else opened.replica_index
        if isinstance(opened, UpstreamResult):  # the upstream refused before streaming: plain JSON error
            return relay_result(opened)
        return StreamRelay(ctx, opened)


def _with_model(raw: bytes, model: str) -> bytes:
    """The body with ``model`` replaced. The stdlib codec keeps every other value exact (orjson would turn
    integers beyond 64 bits into floats); it only runs for backends with ``upstream_model`` set."""
    data = json.loads(raw)
    data["model"] = model
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()
