"""Errors tell clients what they need and nothing more: no upstream address, client-library wording or exception
text in an answer (those stay in the logs, each line with the request id), a stable ``code``, and an access-log
``outcome`` that matches the status."""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

import pytest
from aiohttp import web

from gateway.context import RequestIdFormatter

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def _access_line(caplog: pytest.LogCaptureFixture, request_id: str) -> str:
    lines = [r.getMessage() for r in caplog.records if r.name == "aligngate.access" and f"rid={request_id} " in
             r.getMessage()]
    assert len(lines) == 1, [r.getMessage() for r in caplog.records]
    return lines[0]


def _outcome(line: str) -> str:
    match = re.search(r" outcome=(\S+)$", line)
    assert match, line
    return match.group(1)


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """Every gateway log line, formatted as ``aligngate serve`` formats them (the request id appended)."""
    caplog.set_level(logging.INFO)
    caplog.handler.setFormatter(RequestIdFormatter("%(levelname)s %(name)s: %(message)s"))
    return caplog


@pytest.mark.parametrize("stream", [False, True])
async def test_an_unreachable_backend_is_named_and_nothing_else(gateway, closed_url, logs, stream: bool) -> None:  # type: ignore[no-untyped-def]
    port = closed_url.split(":")[2].split("/")[0]
    async with gateway([{"name": "m", "urls": [closed_url], "retries": 1}]) as (_, client):
        r = await client.post("/v1/chat/completions", json={**CHAT, "stream": stream})
    assert r.status_code == 502
    assert r.json() == {"error": {"message": "Backend 'm' is unreachable.", "type": "upstream_error", "param": None,
                                  "code": "upstream_unavailable"}}
    assert port not in r.text and "127.0.0.1" not in r.text
    rid = r.headers["x-request-id"]
    # the address and the library's wording are in the log, on a line that carries the request id
    detailed = [ln for ln in logs.text.splitlines() if port in ln]
    assert detailed and all(f"rid={rid}" in ln for ln in detailed), logs.text
    assert _outcome(_access_line(logs, rid)) == "upstream_unavailable"


async def test_a_silent_backend_is_a_504_with_a_stable_code(gateway, start_upstream, logs) -> None:  # type: ignore[no-untyped-def]
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(5)
        return web.Response(text="{}")

    up = await start_upstream({"POST /v1/chat/completions": slow})
    async with gateway([{"name": "m", "urls": [up.url], "timeout_s": 0.1, "retries": 0}]) as (_, client):
        r = await client.post("/v1/chat/completions", json=CHAT)
    assert r.status_code == 504
    err = r.json()["error"]
    assert (err["code"], err["type"]) == ("upstream_timeout", "upstream_error")
    assert err["message"] == "Backend 'm' did not answer within 0.1s."
    assert str(up.port) not in r.text
    assert _outcome(_access_line(logs, r.headers["x-request-id"])) == "upstream_timeout"


async def _relay_error(request: web.Request) -> web.Response:
    return web.json_response({"error": {"message": "too long", "type": "invalid_request_error", "param": None,
                                        "code": "context_length_exceeded"}}, status=400)


async def _relay_text(request: web.Request) -> web.Response:
    return web.Response(text="bad gateway", status=500)


@pytest.mark.parametrize(
    ("path", "body", "status", "outcome"),
    [
        ("/v1/chat/completions", CHAT, 200, "ok"),
        ("/v1/completions", {"model": "m", "prompt": "p"}, 400, "context_length_exceeded"),
        ("/v1/chat/completions", {**CHAT, "fake": 1, "model": "text"}, 500, "upstream_error"),
        ("/v1/chat/completions", {"model": "m"}, 400, "missing_required_parameter"),
        ("/v1/chat/completions", {**CHAT, "model": "nope"}, 404, "model_not_found"),
        ("/v1/chat/completions", {**CHAT, "n": 10**6}, 400, "integer_above_max_value"),
        ("/v1/nowhere", CHAT, 404, "http_404"),
    ],
    ids=["ok", "relayed-code", "relayed-text", "missing", "unknown-model", "limit", "unknown-route"],
)
async def test_the_access_log_outcome_matches_the_status(  # type: ignore[no-untyped-def]
    gateway, start_upstream, logs, path: str, body: dict[str, Any], status: int, outcome: str
) -> None:
    async def ok(request: web.Request) -> web.Response:
        return web.json_response({"choices": [{"index": 0, "message": {"role": "assistant", "content": "x"}}]})

    up = await start_upstream({"POST /v1/chat/completions": ok, "POST /v1/completions": _relay_error})
    text = await start_upstream({"POST /v1/chat/completions": _relay_text})
    backends = [{"name": "m", "urls": [up.url]}, {"name": "text", "urls": [text.url], "retries": 0}]
    async with gateway(backends) as (_, client):
        r = await client.post(path, json=body)
    assert r.status_code == status, r.text
    assert _outcome(_access_line(logs, r.headers["x-request-id"])) == outcome


def test_the_formatter_adds_the_request_id_only_inside_a_request() -> None:
    from gateway.context import REQUEST_ID

    fmt = RequestIdFormatter("%(name)s: %(message)s")
    record = logging.LogRecord("gateway.x", logging.INFO, __file__, 1, "hello %s", ("there",), None)
    assert fmt.format(record) == "gateway.x: hello there"
    token = REQUEST_ID.set("abc123")
    try:
        assert fmt.format(record) == "gateway.x: hello there rid=abc123"
        access = logging.LogRecord("aligngate.access", logging.INFO, __file__, 1, "x rid=abc123 y", (), None)
        assert fmt.format(access) == "aligngate.access: x rid=abc123 y"  # it names the request already
    finally:
        REQUEST_ID.reset(token)
