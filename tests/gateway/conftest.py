"""Shared fixtures of the gateway unit tests: in-test aiohttp upstreams, a closed port, the in-process app."""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web

from gateway.app import GatewayApp, create_app
from gateway.config import Settings
from gateway.upstream import backend as backend_mod

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Upstream:
    """An aiohttp server started inside the test; ``url`` is its ``/v1`` base, ``seen`` every request."""

    url: str
    port: int
    seen: list[Seen] = field(default_factory=list)

    def hits(self, path: str | None = None) -> int:
        return sum(1 for s in self.seen if path is None or s.path == path)


StartUpstream = Callable[..., Awaitable[Upstream]]


@pytest.fixture
async def start_upstream() -> AsyncIterator[StartUpstream]:
    """``await start_upstream({"POST /v1/chat/completions": handler, ...})`` starts a server on a free port."""
    runners: list[web.AppRunner] = []

    async def start(routes: dict[str, Handler]) -> Upstream:
        upstream: Upstream | None = None

        @web.middleware
        async def record(request: web.Request, handler: Handler) -> web.StreamResponse:
            body = await request.read()
            assert upstream is not None
            upstream.seen.append(Seen(request.method, request.path, dict(request.headers), body))
            return await handler(request)

        app = web.Application(middlewares=[record])
        for spec, handler in routes.items():
            method, path = spec.split(" ", 1)
            app.router.add_route(method, path, handler)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.2, handler_cancellation=True)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        port = runner.addresses[0][1]
        upstream = Upstream(url=f"http://127.0.0.1:{port}/v1", port=port)
        return upstream

    yield start
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
def closed_url() -> str:
    """The ``/v1`` base of a local port nothing listens on (connect is refused at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No ALIGNGATE_* variable of the developer's shell leaks into a test; upstream retries back off fast."""
    for name in list(os.environ):
        if name.upper().startswith("ALIGNGATE_"):
            monkeypatch.delenv(name)
    monkeypatch.setattr(backend_mod, "BACKOFF_BASE_S", 0.001)


def settings_for(backends: list[dict[str, Any]], *, store: dict[str, Any] | None = None, **server: Any) -> Settings:
    """Settings without reading the environment (``model_validate`` skips the env sources); the trace store
    is off unless ``store`` says otherwise (never an ``aligngate.db`` in the working directory)."""
    return Settings.model_validate(
        {"server": server, "backends": backends, "store": store if store is not None else {"enabled": False}}
    )


GatewayFactory = Callable[..., AbstractAsyncContextManager[tuple[GatewayApp, httpx.AsyncClient]]]


@pytest.fixture
def gateway(tmp_path: Path) -> GatewayFactory:
    """``async with gateway(backends, **server) as (app, client)``: the app with its lifespan running, its
    trace store a SQLite file in ``tmp_path`` (``store={...}`` overrides)."""

    @asynccontextmanager
    async def run(
        backends: list[dict[str, Any]], *, store: dict[str, Any] | None = None, **server: Any
    ) -> AsyncIterator[tuple[GatewayApp, httpx.AsyncClient]]:
        store = store if store is not None else {"url": f"sqlite:///{tmp_path / 'aligngate.db'}"}
        app = create_app(settings_for(backends, store=store, **server))
        async with app.lifespan():
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
                yield app, client

    return run
