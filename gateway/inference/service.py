"""The inference service behind the OpenAI routes: checks a request and hands it to the pipeline.

Validates the request (400/404/413 in the OpenAI shape), picks the configured backend and the arm (the user's
assignment from ``X-Aligngate-User``, ``user`` or the API key, unless ``X-Aligngate-Arm`` forces one), sets up
what the trace store records (a ``Capture``: references only, the store's writer parses them later) and, in
shadow mode, attaches a shadow run to a sampled share of the assigned-control requests (it starts once their
response has been sent: ``gateway/pipeline/shadow.py``). Then the pipeline answers (``gateway/pipeline``: the
control arm is the pipeline with no steps). A client that goes away meanwhile cancels the upstream work.

The API keys and the rate limiter are swapped together by :meth:`InferenceService.reconfigure` (a reload on
SIGHUP: ``gateway/reload.py``); a request reads both once, when it arrives, so it is served under one of them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping

from starlette.types import ASGIApp, Receive

from gateway import metrics
from gateway.auth import ApiKeyAuth
from gateway.config import Arm, ExperimentSettings, HelpersSettings, LimitsSettings
from gateway.context import Capture, RecordSink, RequestContext
from gateway.errors import BadRequest, GatewayError, ModelNotFound
from gateway.inference.checks import checked_request
from gateway.inference.receive import RequestHeaders, read_body
from gateway.pipeline.arms import ArmChooser, user_key
from gateway.pipeline.helpers import Helpers
from gateway.pipeline.pipeline import CHAT_PATH, Pipeline, PipelineRequest
from gateway.pipeline.shadow import ShadowRunner
from gateway.ratelimit.limiter import RateLimiter, settling
from gateway.respond import until_disconnect
from gateway.upstream.protocol import Backend
from models.wire.schemas import ChatCompletionRequest, CompletionRequest, ModelCard, ModelList

logger = logging.getLogger(__name__)


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
        limits: LimitsSettings | None = None,
        body_timeout_s: float | None = None,
        rate_limits: RateLimiter | None = None,
    ) -> None:
        self.backends = backends
        self.arms = arms or ArmChooser(ExperimentSettings(), HelpersSettings())
        self.pipeline = pipeline or Pipeline(Helpers(None, None))
        self._access = (auth, rate_limits)
        self.max_body_bytes = max_body_bytes
        self.log_request_bodies = log_request_bodies
        self.created = int(time.time())
        #: The trace store every inference request is recorded in (None: nothing is recorded).
        self.store = store
        self.log_bodies = log_bodies
        #: Shadow mode (None: off, ``experiment.shadow.share`` 0); it records through the store, so needs one.
        self.shadow = shadow if store is not None else None
        #: Bounds checked before anything goes upstream (``server.limits``).
        self.limits = limits or LimitsSettings()
        #: Longest wait for the whole request body (``server.body_timeout_s``; None: no limit).
        self.body_timeout_s = body_timeout_s

    @property
    def auth(self) -> ApiKeyAuth:
        return self._access[0]

    @property
    def rate_limits(self) -> RateLimiter | None:
        """``server.rate_limits`` (None: off)."""
        return self._access[1]

    def reconfigure(self, auth: ApiKeyAuth, rate_limits: RateLimiter | None) -> None:
        """Serve the requests that arrive from now on with these keys and limits (both at once)."""
        self._access = (auth, rate_limits)

    def models(self, authorization: str | None) -> ModelList:
        self.auth.check(authorization)
        return ModelList(data=[ModelCard(id=name, created=self.created) for name in self.backends])

    async def serve(self, ctx: RequestContext, path: str, headers: RequestHeaders, receive: Receive) -> ASGIApp:
        """Answer one inference request to ``path`` (``CHAT_PATH`` or ``COMPLETIONS_PATH``): the response to
        send, an ASGI app. Raises ``GatewayError`` (the OpenAI error to answer) and ``ClientDisconnected``."""
        auth, limiter = self._access
        auth.check(headers.authorization)
        raw = await read_body(receive, headers.content_length, self.max_body_bytes, self.body_timeout_s)
        req: ChatCompletionRequest | CompletionRequest = (
            checked_request(raw, ChatCompletionRequest, self.limits) if path == CHAT_PATH
            else checked_request(raw, CompletionRequest, self.limits)
        )
        if self.log_request_bodies:
            logger.debug("request %s body: %s", ctx.request_id, raw.decode("utf-8", "replace"))
        if isinstance(req, CompletionRequest) and not req.has_prompt():
            raise BadRequest("Missing required parameter: 'prompt'.", param="prompt", code="missing_required_parameter")
        return await self._answer(ctx, headers, receive, raw, req, path, auth.enabled, limiter)

    async def _answer(
        self, ctx: RequestContext, headers: RequestHeaders, receive: Receive, raw: bytes,
        req: ChatCompletionRequest | CompletionRequest, path: str, keyed: bool, limiter: RateLimiter | None,
    ) -> ASGIApp:
        backend = self.backends.get(req.model)
        if backend is None:
            raise ModelNotFound(
                f"The model '{req.model}' does not exist; GET /v1/models lists the served models.", param="model"
            )
        ctx.model = backend.name
        admission = None
        if limiter is not None:  # a 429 here reaches no upstream
            admission = await limiter.admit(headers.authorization, headers.user, req, len(raw))
            if admission is not None:
                ctx.headers = admission.headers
        # The API key names a user only when keys are configured (without them every client's token is
        # whatever its SDK needed, often the same placeholder).
        key, source = user_key(headers.user, req.user, headers.authorization if keyed else None)
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
            if (shadow is not None and arm is Arm.CONTROL and not assignment.forced
                    and shadow.sampled(ctx.request_id)):
                # the response does not change; once it has been sent, the shadow run starts
                shadow.attach(ctx.capture, raw, path == CHAT_PATH)
        metrics.request_started(ctx)
        trace_on = headers.trace is not None and headers.trace.strip().lower() in ("1", "true")
        preq = PipelineRequest(ctx, backend, path, raw, arm, trace_on, ctx.stream)
        if admission is None or not admission.tokens:
            return await until_disconnect(receive, self.pipeline.run(preq))
        assert limiter is not None
        try:
            response = await until_disconnect(receive, self.pipeline.run(preq))
        except BaseException as exc:  # no answer (an error, a client gone, a cancellation): the tokens go back
            await limiter.settle(admission, exc.status if isinstance(exc, GatewayError) else 0, None)
            raise
        return settling(response, limiter, admission)
