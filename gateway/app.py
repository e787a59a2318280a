"""The ASGI application: the wiring of settings, the shared upstream session, services and routes.

``create_app(settings)`` builds it; ``app_from_env`` is the factory uvicorn workers import (the CLI hands them
the resolved settings through the environment). A :class:`GatewayApp` is plain ASGI: its lifespan starts and
stops the backends, helpers and trace store, and every HTTP request goes through the request middleware
(request id, timing, metrics, access log) to the one router (``gateway/routing.py``), where each route of
``ROUTES`` is registered once (``server.ui: false`` leaves out the web pages' routes, ``/ui`` and below).
Served by ``aligngate serve``, a worker reloads its API keys and rate limits on SIGHUP (``gateway/reload.py``).
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from starlette.datastructures import State
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway import metrics
from gateway.auth import ApiKeyAuth
from gateway.config import HelperSettings, Settings, check_servable, settings_from_env
from gateway.engines import EngineSet
from gateway.feedback.routes import ROUTES as FEEDBACK_ROUTES
from gateway.feedback.service import FeedbackService
from gateway.inference.routes import ROUTES as INFERENCE_ROUTES
from gateway.inference.service import InferenceService
from gateway.middleware import RequestMiddleware
from gateway.ops.routes import ROUTES as OPS_ROUTES
from gateway.pipeline.arms import ArmChooser
from gateway.pipeline.gate import Gate
from gateway.pipeline.helpers import Helpers
from gateway.pipeline.pipeline import Pipeline
from gateway.pipeline.probe import HelperProbes
from gateway.pipeline.shadow import ShadowRunner
from gateway.ratelimit.buckets import Buckets, open_buckets
from gateway.ratelimit.limiter import RateLimiter
from gateway.reload import ConfigSource, Reloader
from gateway.routing import Router
from gateway.runtime import tune_gc
from gateway.store.store import Store
from gateway.ui.api import UiApi
from gateway.ui.pages import PREFIX as UI_PREFIX
from gateway.ui.pages import SECURITY_HEADERS, is_ui_path
from gateway.ui.routes import ROUTES as UI_ROUTES
from gateway.upstream.backend import RemoteBackend
from gateway.upstream.client import make_session
from gateway.upstream.local import LocalBackend
from gateway.upstream.protocol import Backend

logger = logging.getLogger(__name__)

#: Every route of the gateway: (method, path, endpoint).
ROUTES: list[tuple[str, str, ASGIApp]] = [*INFERENCE_ROUTES, *FEEDBACK_ROUTES, *OPS_ROUTES, *UI_ROUTES]


def routes_for(settings: Settings) -> list[tuple[str, str, ASGIApp]]:
    """The routes a gateway with ``settings`` serves: :data:`ROUTES`, less the web pages' with ``server.ui`` off."""
    return [route for route in ROUTES if settings.server.ui or not is_ui_path(route[1])]

Lifespan = Callable[["GatewayApp"], AbstractAsyncContextManager[None]]


@asynccontextmanager
async def _no_lifespan(app: GatewayApp) -> AsyncIterator[None]:
    yield


class GatewayApp:
    """The gateway as an ASGI app. Services live in ``state`` (``inference``, ``feedback``, ``ui``, ``store``,
    ``settings``); endpoints reach them as ``scope["app"].state``."""

    def __init__(
        self, routes: Iterable[tuple[str, str, ASGIApp]] = ROUTES, lifespan: Lifespan | None = None, *,
        max_concurrent_requests: int = 0,
    ) -> None:
        self.state = State()
        routes = list(routes)
        ui_on = any(is_ui_path(path) for _method, path, _app in routes)
        self.router = Router(routes, {UI_PREFIX: SECURITY_HEADERS} if ui_on else None)
        self._http = RequestMiddleware(self.router, max_concurrent=max_concurrent_requests)
        self._lifespan = lifespan or _no_lifespan

    def lifespan(self) -> AbstractAsyncContextManager[None]:
        """Start-up on entry, shutdown on exit: for running the app in-process (tests, ``aligngate eval``)."""
        return self._lifespan(self)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            scope["app"] = self
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._serve_lifespan(receive, send)
        else:  # websockets are not served
            await send({"type": "websocket.close", "code": 1000})

    async def _serve_lifespan(self, receive: Receive, send: Send) -> None:
        """The ASGI lifespan protocol around :meth:`lifespan` (as Starlette's router runs it)."""
        started = False
        await receive()  # lifespan.startup
        try:
            async with self.lifespan():
                await send({"type": "lifespan.startup.complete"})
                started = True
                await receive()  # lifespan.shutdown
        except BaseException:
            text = traceback.format_exc()
            await send({"type": "lifespan.shutdown.failed" if started else "lifespan.startup.failed", "message": text})
            raise
        await send({"type": "lifespan.shutdown.complete"})


def _limiter(settings: Settings, buckets: Buckets) -> RateLimiter | None:
    limits = settings.server.rate_limits
    return RateLimiter(limits, buckets) if limits.enabled else None


def _gate(engines: EngineSet, aligner: HelperSettings) -> Gate | None:
    """The aligner's reward gate (None when not configured): its reward model, margin, timeout and ``on_error``."""
    scorer = engines.scorer(aligner)
    if scorer is None or aligner.gate is None:
        return None
    spec = aligner.gate
    return Gate(scorer, margin=spec.margin, timeout_s=spec.timeout_s, on_error=aligner.on_error)


def create_app(settings: Settings, reload_source: ConfigSource | None = None) -> GatewayApp:
    """The gateway for ``settings``; with ``reload_source`` (what they were resolved from), SIGHUP reloads the API
    keys and rate limits from it."""
    check_servable(settings)
    auth = ApiKeyAuth(settings.server.api_keys)

    @asynccontextmanager
    async def lifespan(app: GatewayApp) -> AsyncIterator[None]:
        session = make_session()
        engines = EngineSet(settings.helpers, session)
        backends: dict[str, Backend] = {}
        store = Store(settings.store) if settings.store.enabled else None
        shadow: ShadowRunner | None = None
        probes: HelperProbes | None = None
        buckets = open_buckets(settings.server.rate_limits)  # kept across reloads, even while limits are off
        reloader: Reloader | None = None
        try:
            if store is not None:
                await store.start()
            for b in settings.backends:
                if b.local is not None:
                    backends[b.name] = LocalBackend(
                        b.name, engines.local(b.local), timeout_s=b.timeout_s, owns_engine=False,
                        on_error=metrics.count_upstream_error,
                    )
                else:
                    backends[b.name] = RemoteBackend(b, session, on_error=metrics.count_upstream_error)
            h = settings.helpers
            helpers = Helpers(
                engines.rewriter(h.rewriter) if h.rewriter is not None else None,
                engines.aligner(h.aligner) if h.aligner is not None else None,
                rewriter_on_error=h.rewriter.on_error if h.rewriter is not None else "skip",
                aligner_on_error=h.aligner.on_error if h.aligner is not None else "skip",
                aligner_stream=h.aligner.stream if h.aligner is not None else "buffer",
                gate=_gate(engines, h.aligner) if h.aligner is not None else None,
            )
            await engines.start()
            if h.probe and (helpers.rewriter is not None or helpers.aligner is not None):
                probes = HelperProbes(helpers.rewriter, helpers.aligner)
                probes.start()
            app.state.probes = probes
            if settings.experiment.shadow.share > 0 and store is not None:
                shadow = ShadowRunner(settings.experiment.shadow, helpers, store, experiment=settings.experiment.name)
            app.state.inference = InferenceService(
                backends, auth,
                max_body_bytes=settings.server.max_body_bytes,
                log_request_bodies=settings.server.log_request_bodies,
                arms=ArmChooser(settings.experiment, settings.helpers),
                pipeline=Pipeline(helpers),
                store=store, log_bodies=settings.store.log_bodies, shadow=shadow,
                limits=settings.server.limits, body_timeout_s=settings.server.body_timeout_s,
                rate_limits=_limiter(settings, buckets),
            )
            app.state.feedback = FeedbackService(store, auth, body_timeout_s=settings.server.body_timeout_s)
            app.state.ui = UiApi(settings, store, auth)
            app.state.store = store
            if reload_source is not None:
                def apply(new: Settings) -> None:
                    new_auth = ApiKeyAuth(new.server.api_keys)
                    app.state.inference.reconfigure(new_auth, _limiter(new, buckets))
                    app.state.feedback.auth = new_auth
                    app.state.settings = new

                reloader = Reloader(reload_source, settings, apply)
                if not reloader.install():
                    reloader = None
            yield
        finally:
            if probes is not None:
                await probes.close()
            if reloader is not None:
                reloader.uninstall()
            if shadow is not None:  # before the store and the helpers: runs in flight finish or are cancelled
                await shadow.close()
            if store is not None:  # after the last request: writes what is queued, or spills it
                await store.close()
            for backend in backends.values():
                await backend.close()
            await engines.close()
            await buckets.close()
            await session.close()

    app = GatewayApp(routes_for(settings), lifespan, max_concurrent_requests=settings.server.max_concurrent_requests)
    app.state.settings = settings
    return app


def app_from_env() -> GatewayApp:
    """uvicorn factory: settings resolved by ``aligngate serve`` (or from ``ALIGNGATE_*`` variables), reloaded on
    SIGHUP from what ``serve`` resolved them from; it also tunes the worker process's garbage collector
    (``gateway/runtime.py``)."""
    app = create_app(settings_from_env(), ConfigSource.from_env())
    tune_gc()
    return app
