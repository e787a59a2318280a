"""The FastAPI application: wiring of settings, the shared upstream session, services and routers.

``create_app(settings)`` builds it; ``app_from_env`` is the factory uvicorn workers import (the CLI hands
them the resolved settings through the environment). ``GatewayApp`` is FastAPI with a fast path: the two
inference POST routes go straight to their raw-ASGI endpoints inside the request middleware, without
FastAPI's per-request layers (routing, dependency injection, its middleware stack), which cost about as much
CPU as the proxying itself.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway import __version__, metrics
from gateway.auth import ApiKeyAuth
from gateway.config import Settings, check_servable, settings_from_env
from gateway.engines import EngineSet
from gateway.errors import install_handlers
from gateway.feedback.router import router as feedback_router
from gateway.feedback.service import FeedbackService
from gateway.inference.router import ENDPOINTS
from gateway.inference.router import router as inference_router
from gateway.inference.service import InferenceService
from gateway.middleware import RequestMiddleware
from gateway.ops.router import router as ops_router
from gateway.pipeline.arms import ArmChooser
from gateway.pipeline.helpers import Helpers
from gateway.pipeline.pipeline import Pipeline
from gateway.pipeline.shadow import ShadowRunner
from gateway.runtime import tune_gc
from gateway.store.store import Store
from gateway.upstream.backend import RemoteBackend
from gateway.upstream.client import make_session
from gateway.upstream.local import LocalBackend
from gateway.upstream.protocol import Backend

logger = logging.getLogger(__name__)


class GatewayApp(FastAPI):
    """FastAPI with the fast path of ``POST /v1/chat/completions`` and ``POST /v1/completions``.

    Those two go to ``RequestMiddleware(InferenceEndpoint)`` directly; everything else (other methods on those
    paths included: 405) through FastAPI as usual. The endpoints answer errors themselves, in the same OpenAI
    shape as the app's exception handlers.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.fast_routes: dict[str, ASGIApp] = {
            path: RequestMiddleware(endpoint) for path, endpoint in ENDPOINTS.items()
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            fast = self.fast_routes.get(scope["path"])
            if fast is not None:
                scope["app"] = self
                await fast(scope, receive, send)
                return
        await super().__call__(scope, receive, send)


def create_app(settings: Settings) -> FastAPI:
    check_servable(settings)
    auth = ApiKeyAuth(settings.server.api_keys)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        session = make_session()
        engines = EngineSet(settings.helpers, session)
        backends: dict[str, Backend] = {}
        store = Store(settings.store) if settings.store.enabled else None
        shadow: ShadowRunner | None = None
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
            )
            await engines.start()
            if settings.experiment.shadow.share > 0 and store is not None:
                shadow = ShadowRunner(settings.experiment.shadow, helpers, store, experiment=settings.experiment.name)
            app.state.inference = InferenceService(
                backends, auth,
                max_body_bytes=settings.server.max_body_bytes,
                log_request_bodies=settings.server.log_request_bodies,
                arms=ArmChooser(settings.experiment, settings.helpers),
                pipeline=Pipeline(helpers),
                store=store, log_bodies=settings.store.log_bodies, shadow=shadow,
            )
            app.state.feedback = FeedbackService(store, auth)
            app.state.store = store
            yield
        finally:
            if shadow is not None:  # before the store and the helpers: runs in flight finish or are cancelled
                await shadow.close()
            if store is not None:  # after the last request: writes what is queued, or spills it
                await store.close()
            for backend in backends.values():
                await backend.close()
            await engines.close()
            await session.close()

    app = GatewayApp(
        title="aligngate", version=__version__, lifespan=lifespan,
        docs_url=None, redoc_url=None, openapi_url=None,
    )
    app.state.settings = settings
    install_handlers(app)
    app.include_router(inference_router)
    app.include_router(feedback_router)
    app.include_router(ops_router)
    app.add_middleware(RequestMiddleware)
    return app


def app_from_env() -> FastAPI:
    """uvicorn factory: settings resolved by ``aligngate serve`` (or from ``ALIGNGATE_*`` variables); it also
    tunes the worker process's garbage collector (``gateway/runtime.py``)."""
    app = create_app(settings_from_env())
    tune_gc()
    return app
