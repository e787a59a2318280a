"""gateway/ops: readiness over real replicas, and the health schema."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from gateway.config import BackendSettings
from gateway.ops.schemas import Health
from gateway.ops.service import readiness
from gateway.upstream.backend import RemoteBackend
from gateway.upstream.client import make_session


async def _ok(request: web.Request) -> web.Response:
    return web.json_response({"object": "list", "data": []})


async def _fail(request: web.Request) -> web.Response:
    return web.Response(status=503)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    s = make_session()
    yield s
    await s.close()


def _backend(session: aiohttp.ClientSession, name: str, urls: list[str]) -> RemoteBackend:
    return RemoteBackend(BackendSettings(name=name, urls=urls), session)


def test_health_schema() -> None:
    assert Health().model_dump() == {"status": "ok"}


async def test_ready_when_every_backend_has_a_replica_up(start_upstream, session, closed_url) -> None:  # type: ignore[no-untyped-def]
    ok = await start_upstream({"GET /v1/models": _ok})
    failing = await start_upstream({"GET /v1/models": _fail})
    backends = {
        "a": _backend(session, "a", [ok.url]),
        "b": _backend(session, "b", [failing.url, closed_url, ok.url]),
    }
    result = await readiness(backends)
    assert result.model_dump(exclude_none=True) == {
        "status": "ready",
        "backends": {
            "a": {"ready": True, "replicas_up": 1, "replicas": 1},
            "b": {"ready": True, "replicas_up": 1, "replicas": 3},
        },
    }
    assert ok.hits("/v1/models") == 2
    assert failing.hits("/v1/models") == 1


async def test_not_ready_when_one_backend_is_down(start_upstream, session, closed_url) -> None:  # type: ignore[no-untyped-def]
    ok = await start_upstream({"GET /v1/models": _ok})
    failing = await start_upstream({"GET /v1/models": _fail})
    backends = {"a": _backend(session, "a", [ok.url]), "b": _backend(session, "b", [failing.url, closed_url])}
    result = await readiness(backends)
    assert result.status == "not_ready"
    assert result.backends["a"].ready is True
    assert (result.backends["b"].ready, result.backends["b"].replicas_up, result.backends["b"].replicas) == (
        False, 0, 2
    )


async def test_no_backends_is_not_ready() -> None:
    result = await readiness({})
    assert result.status == "not_ready"
    assert result.backends == {}
