"""Fixtures of the helper/engine tests: the fake upstream subprocess, in-test aiohttp servers, a closed port."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import pytest
from aiohttp import web

from models import remote
from tests.models.support import FakeUpstream

API_KEY = "sk-test-0123456789abcdef"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
StartServer = Callable[[dict[str, Handler]], Awaitable[str]]


@pytest.fixture(scope="session")
def fake_proc() -> Iterator[FakeUpstream]:
    proc = FakeUpstream("helper")
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="session")
def keyed_fake_proc() -> Iterator[FakeUpstream]:
    proc = FakeUpstream("keyed", "--require-key", API_KEY)
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def fake(fake_proc: FakeUpstream) -> FakeUpstream:
    """The shared fake upstream, its request log emptied."""
    fake_proc.reset()
    return fake_proc


@pytest.fixture
def keyed_fake(keyed_fake_proc: FakeUpstream) -> FakeUpstream:
    keyed_fake_proc.reset()
    return keyed_fake_proc


@pytest.fixture(autouse=True)
def _fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(remote, "BACKOFF_BASE_S", 0.001)


@pytest.fixture
def closed_url() -> str:
    """The ``/v1`` base of a local port nothing listens on (connect is refused at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


@pytest.fixture
async def start_server() -> AsyncIterator[StartServer]:
    """``url = await start_server({"POST /v1/completions": handler})``: an aiohttp server; returns its /v1 base."""
    runners: list[web.AppRunner] = []

    async def start(routes: dict[str, Handler]) -> str:
        app = web.Application()
        for spec, handler in routes.items():
            method, path = spec.split(" ", 1)
            app.router.add_route(method, path, handler)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.2)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        runners.append(runner)
        return f"http://127.0.0.1:{runner.addresses[0][1]}/v1"

    yield start
    for runner in runners:
        await runner.cleanup()
