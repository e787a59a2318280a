"""gateway/app.py: wiring, lifespan, operational routes and the last-resort error handling of the whole app."""

from __future__ import annotations

import gc
import logging
import re

import pytest
from aiohttp import web

from gateway import app as app_module
from gateway.app import app_from_env, create_app
from gateway.config import RESOLVED_ENV, ConfigError, Settings, dump_resolved
from gateway.inference.service import InferenceService
from gateway.runtime import YOUNG_THRESHOLD, tune_gc

HEX32 = re.compile(r"^[0-9a-f]{32}$")
CHAT = {"model": "m", "messages": [{"role": "user", "content": "x"}]}


async def _models_ok(request: web.Request) -> web.Response:
    return web.json_response({"object": "list", "data": []})


async def _chat_ok(request: web.Request) -> web.Response:
    return web.json_response({"id": "1", "choices": []})


@pytest.fixture
async def up(start_upstream):  # type: ignore[no-untyped-def]
    return await start_upstream({"GET /v1/models": _models_ok, "POST /v1/chat/completions": _chat_ok})


def test_create_app_refuses_unservable_settings() -> None:
    with pytest.raises(ConfigError, match="no backends configured"):
        create_app(Settings.model_validate({}))
    arm_without_helper = Settings.model_validate(
        {"backends": [{"name": "s", "urls": ["http://h:1/v1"]}], "experiment": {"arms": {"align": 1}}}
    )
    with pytest.raises(ConfigError, match=r"needs helpers\.aligner"):
        create_app(arm_without_helper)


def test_app_from_env_uses_the_resolved_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings.model_validate({"backends": [{"name": "from-env", "urls": ["http://h:1/v1"]}]})
    monkeypatch.setenv(RESOLVED_ENV, dump_resolved(settings))
    tuned: list[bool] = []
    monkeypatch.setattr(app_module, "tune_gc", lambda: tuned.append(True))  # not this test process's collector
    app = app_from_env()
    assert app.state.settings == settings
    assert not {"/docs", "/redoc", "/openapi.json"} & set(app.router.table)
    assert tuned == [True]


def test_tune_gc_freezes_start_up_objects_and_raises_the_young_threshold() -> None:
    before = gc.get_threshold()
    try:
        tune_gc()
        assert gc.get_threshold() == (YOUNG_THRESHOLD, before[1], before[2])
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


async def test_lifespan_builds_and_closes_the_backends(gateway, up) -> None:  # type: ignore[no-untyped-def]
    async with gateway([{"name": "m", "urls": [up.url]}, {"name": "n", "urls": [up.url, up.url]}]) as (app, _):
        service = app.state.inference
        assert isinstance(service, InferenceService)
        assert list(service.backends) == ["m", "n"]
        assert [len(b.pool.replicas) for b in service.backends.values()] == [1, 2]
        session = service.backends["m"].session
        assert session is service.backends["n"].session  # one shared session
        assert not session.closed
    assert session.closed


async def test_healthz(gateway, up) -> None:  # type: ignore[no-untyped-def]
    async with gateway([{"name": "m", "urls": [up.url]}]) as (_, client):
        r = await client.get("/healthz")
    assert r.status_code == 200
    assert r.json() == {"status": "ok"}
    assert HEX32.match(r.headers["x-request-id"])


async def test_readyz_ready(gateway, up) -> None:  # type: ignore[no-untyped-def]
    async with gateway([{"name": "m", "urls": [up.url]}]) as (_, client):
        r = await client.get("/readyz")
    assert r.status_code == 200
    assert r.json() == {"status": "ready", "backends": {"m": {"ready": True, "replicas_up": 1, "replicas": 1}}}


async def test_readyz_not_ready(gateway, up, closed_url) -> None:  # type: ignore[no-untyped-def]
    backends = [{"name": "m", "urls": [up.url, closed_url]}, {"name": "down", "urls": [closed_url]}]
    async with gateway(backends) as (_, client):
        r = await client.get("/readyz")
    assert r.status_code == 503
    assert r.json() == {
        "status": "not_ready",
        "backends": {
            "m": {"ready": True, "replicas_up": 1, "replicas": 2},
            "down": {"ready": False, "replicas_up": 0, "replicas": 1},
        },
    }


async def test_ops_routes_need_no_key(gateway, up) -> None:  # type: ignore[no-untyped-def]
    async with gateway([{"name": "m", "urls": [up.url]}], api_keys=["k"]) as (_, client):
        codes = [(await client.get(p)).status_code for p in ("/healthz", "/readyz", "/metrics")]
    assert codes == [200, 200, 200]


async def test_metrics_exposition(gateway, up) -> None:  # type: ignore[no-untyped-def]
    async with gateway([{"name": "m", "urls": [up.url]}]) as (_, client):
        assert (await client.post("/v1/chat/completions", json=CHAT)).status_code == 200
        r = await client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    text = r.text
    for name in (
        "aligngate_requests_total", "aligngate_request_duration_seconds_bucket", "aligngate_ttft_seconds_bucket",
        "aligngate_overhead_seconds_bucket", "aligngate_in_flight", "aligngate_upstream_errors",
    ):
        assert name in text
    assert re.search(r'aligngate_requests_total\{arm="control",model="m",status="200"\} [1-9]', text)


async def test_unknown_route_and_wrong_method(gateway, up) -> None:  # type: ignore[no-untyped-def]
    async with gateway([{"name": "m", "urls": [up.url]}]) as (_, client):
        missing = await client.get("/v1/nothing")
        wrong = await client.get("/v1/chat/completions")
    assert missing.status_code == 404
    assert missing.json() == {
        "error": {"message": "Unknown route: GET /v1/nothing", "type": "invalid_request_error", "param": None,
                  "code": None}
    }
    assert HEX32.match(missing.headers["x-request-id"])
    assert wrong.status_code == 405
    assert wrong.json()["error"]["message"] == "Method GET not allowed on /v1/chat/completions"
    assert wrong.json()["error"]["type"] == "invalid_request_error"


async def test_no_docs_routes(gateway, up) -> None:  # type: ignore[no-untyped-def]
    async with gateway([{"name": "m", "urls": [up.url]}]) as (_, client):
        assert (await client.get("/docs")).status_code == 404
        assert (await client.get("/openapi.json")).status_code == 404


async def test_unexpected_exception_is_a_clean_500(gateway, up, monkeypatch, caplog) -> None:  # type: ignore[no-untyped-def]
    async def boom(self: InferenceService, *args: object) -> None:
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(InferenceService, "serve", boom)
    async with gateway([{"name": "m", "urls": [up.url]}]) as (_, client):
        with caplog.at_level(logging.ERROR, logger="gateway.middleware"):
            r = await client.post("/v1/chat/completions", json=CHAT, headers={"X-Request-Id": "rid-500"})
        after = await client.get("/healthz")  # the app keeps serving
    assert r.status_code == 500
    assert r.headers["content-type"] == "application/json"
    assert r.json() == {
        "error": {
            "message": "Internal error in the gateway; see its logs.",
            "type": "server_error",
            "param": None,
            "code": "internal_error",
        }
    }
    assert "secret internal detail" not in r.text
    assert "Traceback" not in r.text
    assert r.headers["x-request-id"] == "rid-500"
    assert "x-aligngate-overhead-ms" in r.headers
    # the traceback goes to the log, with the request id
    [record] = [rec for rec in caplog.records if rec.name == "gateway.middleware"]
    assert "rid-500" in record.getMessage()
    assert record.exc_info is not None and "secret internal detail" in str(record.exc_info[1])
    assert after.status_code == 200
