"""``server.rate_limits`` through the app: requests and tokens per minute per API key and per ``X-Aligngate-User``,
bursts, per-key overrides, tokens reserved from ``max_tokens`` and settled from ``usage``; 429 in the OpenAI shape
with ``Retry-After`` and OpenAI's ``x-ratelimit-*`` headers."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from aiohttp import web
from prometheus_client import REGISTRY

USAGE = {"prompt_tokens": 12, "completion_tokens": 8, "total_tokens": 20}


async def _chat(request: web.Request) -> web.StreamResponse:
    body = await request.json()
    if body.get("fail"):
        return web.json_response({"error": {"message": "no", "type": "server_error", "code": None}}, status=500)
    headers = {"x-ratelimit-limit-requests": "999999"}  # an upstream's own: the gateway's replace it
    if not body.get("stream"):
        return web.json_response({"choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}],
                                  "usage": USAGE}, headers=headers)
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", **headers})
    await resp.prepare(request)
    await resp.write(b'data: {"choices":[{"index":0,"delta":{"content":"hi"}}]}\n\n')
    if (body.get("stream_options") or {}).get("include_usage"):
        await resp.write(b"data: " + orjson.dumps({"choices": [], "usage": USAGE}) + b"\n\n")
    await resp.write(b"data: [DONE]\n\n")
    await resp.write_eof()
    return resp


@pytest.fixture
async def up(start_upstream):  # type: ignore[no-untyped-def]
    return await start_upstream({"POST /v1/chat/completions": _chat})


def _limited(scope: str, reason: str) -> float:
    return REGISTRY.get_sample_value("aligngate_rate_limited_total", {"scope": scope, "reason": reason}) or 0.0


def _chat_body(**fields: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields}


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _assert_429(r: Any, reason: str) -> dict[str, Any]:
    assert r.status_code == 429, r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert (body["error"]["type"], body["error"]["code"]) == ("rate_limit_error", "rate_limit_exceeded")
    assert reason in body["error"]["message"]
    assert int(r.headers["retry-after"]) >= 1
    return body["error"]  # type: ignore[no-any-return]


async def test_requests_per_minute_per_key(gateway, up) -> None:  # type: ignore[no-untyped-def]
    limits = {"per_key": {"requests_per_minute": 2}, "keys": {"sk-big": {"requests_per_minute": 5}}}
    before = _limited("key", "requests")
    async with gateway([{"name": "m", "urls": [up.url]}], api_keys=["sk-a", "sk-b", "sk-big"],
                       rate_limits=limits) as (_, client):
        seen = []
        for _ in range(2):
            r = await client.post("/v1/chat/completions", json=_chat_body(), headers=_auth("sk-a"))
            assert r.status_code == 200
            assert r.headers.get_list("x-ratelimit-limit-requests") == ["2"]  # the upstream's own is replaced
            seen.append(r.headers["x-ratelimit-remaining-requests"])
            assert r.headers["x-ratelimit-reset-requests"].endswith("s")
        assert seen == ["1", "0"]
        r = await client.post("/v1/chat/completions", json=_chat_body(), headers=_auth("sk-a"))
        _assert_429(r, "requests")
        assert r.headers["x-ratelimit-limit-requests"] == "2" and r.headers["x-ratelimit-remaining-requests"] == "0"
        assert 25 <= int(r.headers["retry-after"]) <= 31  # one request back every 30 s
        assert up.hits() == 2
        # another key has its own bucket; a key with an override its own limit
        assert (await client.post("/v1/chat/completions", json=_chat_body(), headers=_auth("sk-b"))).status_code == 200
        statuses = [(await client.post("/v1/chat/completions", json=_chat_body(), headers=_auth("sk-big"))).status_code
                    for _ in range(6)]
        assert statuses == [200] * 5 + [429]
        # other routes are not limited
        assert (await client.get("/v1/models", headers=_auth("sk-a"))).status_code == 200
        assert "x-ratelimit-limit-requests" not in (await client.get("/v1/models", headers=_auth("sk-a"))).headers
    assert _limited("key", "requests") - before == 2


async def test_requests_per_minute_per_user_within_a_key(gateway, up) -> None:  # type: ignore[no-untyped-def]
    before = _limited("user", "requests")
    limits = {"per_user": {"requests_per_minute": 60, "burst_requests": 1}}
    async with gateway([{"name": "m", "urls": [up.url]}], rate_limits=limits) as (_, client):
        alice = {"X-Aligngate-User": "alice"}
        assert (await client.post("/v1/chat/completions", json=_chat_body(), headers=alice)).status_code == 200
        err = _assert_429(await client.post("/v1/chat/completions", json=_chat_body(), headers=alice), "requests")
        assert "alice" not in err["message"]
        bob = {"X-Aligngate-User": "bob"}
        assert (await client.post("/v1/chat/completions", json=_chat_body(), headers=bob)).status_code == 200
        # the same user name under another key is another user
        other = {**alice, **_auth("other-app")}
        assert (await client.post("/v1/chat/completions", json=_chat_body(), headers=other)).status_code == 200
        # no header: no per-user limit
        for _ in range(3):
            assert (await client.post("/v1/chat/completions", json=_chat_body())).status_code == 200
    assert _limited("user", "requests") - before == 1


async def test_tokens_are_reserved_from_max_tokens_and_settled_from_usage(gateway, up) -> None:  # type: ignore[no-untyped-def]
    before = _limited("key", "tokens")
    async with gateway([{"name": "m", "urls": [up.url]}], rate_limits={"per_key": {"tokens_per_minute": 1000}}) as (
        _, client
    ):
        body = orjson.dumps(_chat_body(max_tokens=600))
        reserve = 600 + len(body) // 4
        r = await client.post("/v1/chat/completions", content=body)
        assert r.status_code == 200
        assert r.headers["x-ratelimit-limit-tokens"] == "1000"
        assert int(r.headers["x-ratelimit-remaining-tokens"]) == 1000 - reserve
        # settled to the 20 tokens used: a second request of the same size fits
        r = await client.post("/v1/chat/completions", content=body)
        assert r.status_code == 200
        assert 1000 - 20 - reserve <= int(r.headers["x-ratelimit-remaining-tokens"]) <= 1000 - 20 - reserve + 5
        # a stream with include_usage is settled as well; one without keeps its reservation
        streamed = orjson.dumps(_chat_body(max_tokens=300, stream=True, stream_options={"include_usage": True}))
        r = await client.post("/v1/chat/completions", content=streamed)
        assert r.status_code == 200 and b"[DONE]" in r.content
        unsettled = orjson.dumps(_chat_body(max_tokens=300, stream=True))
        r = await client.post("/v1/chat/completions", content=unsettled)
        assert r.status_code == 200
        left = int(r.headers["x-ratelimit-remaining-tokens"])  # after its reservation of 300 and the prompt
        small = orjson.dumps(_chat_body(max_tokens=1))
        r = await client.post("/v1/chat/completions", content=small)
        # the 300 stayed reserved (given back, this would be about 300 more)
        assert int(r.headers["x-ratelimit-remaining-tokens"]) <= left - (1 + len(small) // 4) + 5
        # a request that does not fit is refused
        big = await client.post("/v1/chat/completions", json=_chat_body(max_tokens=900))
        _assert_429(big, "tokens")
        assert big.headers["x-ratelimit-limit-tokens"] == "1000"
    assert _limited("key", "tokens") - before == 1


async def test_a_failed_request_gives_its_tokens_back(gateway, up) -> None:  # type: ignore[no-untyped-def]
    async with gateway([{"name": "m", "urls": [up.url], "retries": 0}],
                       rate_limits={"per_key": {"tokens_per_minute": 1000}}) as (_, client):
        r = await client.post("/v1/chat/completions", json=_chat_body(max_tokens=700, fail=True))
        assert r.status_code == 500
        assert r.headers["x-ratelimit-limit-tokens"] == "1000"  # errors on limited routes carry them too
        r = await client.post("/v1/chat/completions", json=_chat_body(max_tokens=700))
        assert r.status_code == 200  # the failed request's 700 came back


async def test_requests_without_max_tokens_reserve_the_default(gateway, up) -> None:  # type: ignore[no-untyped-def]
    limits = {"per_key": {"tokens_per_minute": 100_000}, "default_max_tokens": 5000}
    async with gateway([{"name": "m", "urls": [up.url]}], rate_limits=limits) as (_, client):
        body = orjson.dumps(_chat_body())
        r = await client.post("/v1/chat/completions", content=body)
        assert int(r.headers["x-ratelimit-remaining-tokens"]) == 100_000 - 5000 - len(body) // 4


async def test_rate_limits_are_off_by_default(gateway, up) -> None:  # type: ignore[no-untyped-def]
    async with gateway([{"name": "m", "urls": [up.url]}]) as (_, client):
        for _ in range(5):
            r = await client.post("/v1/chat/completions", json=_chat_body())
            assert r.status_code == 200
            assert "x-ratelimit-remaining-requests" not in r.headers
            assert r.headers["x-ratelimit-limit-requests"] == "999999"  # the upstream's own, passed on


def test_reset_durations_are_written_as_openai_writes_them() -> None:
    from gateway.ratelimit.limiter import duration

    assert [duration(s) for s in (0.0, 0.02, 0.5, 1.0, 1.5, 59.9, 60.0, 360.0, 3725.0)] == [
        "0s", "20ms", "500ms", "1s", "1.5s", "59.9s", "1m0s", "6m0s", "1h2m5s"]


def test_a_bad_override_key_is_a_config_error() -> None:
    from gateway.config import ConfigError, load_settings

    with pytest.raises(ConfigError, match="64 hex digits"):
        load_settings(overrides={"server": {"rate_limits": {"keys": {"sha256:abc": {"requests_per_minute": 1}}}}})
    assert json.loads("{}") == {}
