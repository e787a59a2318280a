"""Strict request checks before the upstream (``server.limits``): non-finite numbers anywhere in the body, and the
bounds on ``n``, ``max_tokens``, the number of messages and how deep the body nests. Every refusal is a 400 in
the OpenAI shape naming the field; nothing reaches the upstream. Unknown fields and custom roles pass untouched."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from aiohttp import web
from prometheus_client import REGISTRY

from gateway.config import LimitsSettings

CHAT_OK = (
    b'{"id":"c","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},'
    b'"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}'
)
CMPL_OK = b'{"id":"c","object":"text_completion","choices":[{"index":0,"text":"hi","finish_reason":"stop"}]}'
LIMITS = {"max_n": 4, "max_tokens": 100, "max_messages": 3, "max_body_depth": 8}


async def _chat(request: web.Request) -> web.Response:
    return web.Response(body=CHAT_OK, content_type="application/json")


async def _cmpl(request: web.Request) -> web.Response:
    return web.Response(body=CMPL_OK, content_type="application/json")


@pytest.fixture
async def up(start_upstream):  # type: ignore[no-untyped-def]
    return await start_upstream({"POST /v1/chat/completions": _chat, "POST /v1/completions": _cmpl})


@pytest.fixture
async def gw(gateway, up):  # type: ignore[no-untyped-def]
    async with gateway([{"name": "m", "urls": [up.url]}], limits=LIMITS) as (_, client):
        yield client


def _rejected(reason: str) -> float:
    return REGISTRY.get_sample_value("aligngate_rejected_total", {"reason": reason}) or 0.0


def _err(resp: Any) -> dict[str, Any]:
    assert resp.status_code == 400, resp.text
    body = resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["type"] == "invalid_request_error"
    return body["error"]  # type: ignore[no-any-return]


MSG = b'"messages": [{"role": "user", "content": "hi"}]'


@pytest.mark.parametrize(
    ("path", "content", "param"),
    [
        ("/v1/chat/completions", b'{"model": "m", ' + MSG + b', "temperature": NaN}', "temperature"),
        ("/v1/chat/completions", b'{"model": "m", ' + MSG + b', "top_p": Infinity}', "top_p"),
        ("/v1/chat/completions", b'{"model": "m", ' + MSG + b', "presence_penalty": -Infinity}', "presence_penalty"),
        ("/v1/chat/completions", b'{"model": "m", ' + MSG + b', "top_k": NaN}', "top_k"),
        ("/v1/chat/completions", b'{"model": "m", ' + MSG + b', "repetition_penalty": 1e999}', "repetition_penalty"),
        ("/v1/chat/completions", b'{"model": "m", ' + MSG + b', "logit_bias": {"50256": -1E400}}', "logit_bias.50256"),
        ("/v1/chat/completions",
         b'{"model": "m", ' + MSG + b', "structured_outputs": {"choice": ["a", {"w": [1, 2, NaN]}]}}',
         "structured_outputs.choice.1.w.2"),
        ("/v1/chat/completions", b'{"model": "m", "messages": [{"role": "user", "content": "x", "weight": Infinity}]}',
         "messages.0.weight"),
        ("/v1/completions", b'{"model": "m", "prompt": "p", "temperature": NaN}', "temperature"),
        ("/v1/completions", b'{"model": "m", "prompt": "p", "seed": 1' + b"0" * 400 + b"}", "seed"),
    ],
    ids=["nan", "infinity", "minus-infinity", "unknown-field", "overflow", "nested-dict", "deep", "in-message",
         "completions", "huge-integer"],
)
async def test_non_finite_numbers_are_refused_naming_the_field(gw, up, path: str, content: bytes, param: str) -> None:  # type: ignore[no-untyped-def]
    before = _rejected("non_finite_number")
    r = await gw.post(path, content=content, headers={"content-type": "application/json"})
    err = _err(r)
    assert err["code"] == "non_finite_number"
    assert err["param"] == param
    assert param in err["message"]
    assert up.hits() == 0
    assert _rejected("non_finite_number") - before == 1


async def test_non_finite_words_inside_strings_pass(gw, up) -> None:  # type: ignore[no-untyped-def]
    body = b'{"model": "m", "messages": [{"role": "user", "content": "NaN, Infinity and -Infinity, 1e999"}]}'
    r = await gw.post("/v1/chat/completions", content=body)
    assert r.status_code == 200
    assert up.seen[0].body == body


async def test_malformed_json_is_still_invalid_json(gw, up) -> None:  # type: ignore[no-untyped-def]
    for body in (b'{"model": "m", "temperature": NaN', b'{"model": "m", "x": Nan}', b'{"a": "\\ud800"}'):
        err = _err(await gw.post("/v1/chat/completions", content=body))
        assert err["code"] == "invalid_json", body
    assert up.hits() == 0


def _messages(k: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"m{i}"} for i in range(k)]


def _nested(depth: int) -> Any:
    """A value that, as a field of the top-level object, makes the body ``depth`` levels deep."""
    value: Any = 1
    for _ in range(depth - 1):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("path", "fields", "param", "code", "reason"),
    [
        ("/v1/chat/completions", {"n": 5}, "n", "integer_above_max_value", "n"),
        ("/v1/chat/completions", {"max_tokens": 101}, "max_tokens", "integer_above_max_value", "max_tokens"),
        ("/v1/chat/completions", {"max_completion_tokens": 1000}, "max_completion_tokens",
         "integer_above_max_value", "max_tokens"),
        ("/v1/chat/completions", {"messages": _messages(4)}, "messages", "array_above_max_length", "messages"),
        ("/v1/chat/completions", {"tools": _nested(9)}, "tools", "body_too_deep", "body_too_deep"),
        ("/v1/completions", {"best_of": 9}, "best_of", "integer_above_max_value", "n"),
        ("/v1/completions", {"max_tokens": 500}, "max_tokens", "integer_above_max_value", "max_tokens"),
        ("/v1/completions", {"prompt": ["a", "b", "c", "d"]}, "prompt", "array_above_max_length", "messages"),
    ],
    ids=["n", "max-tokens", "max-completion-tokens", "messages", "depth", "best-of", "completions-max-tokens",
         "prompt-batch"],
)
async def test_bounds_from_config(  # type: ignore[no-untyped-def]
    gw, up, path: str, fields: dict[str, Any], param: str, code: str, reason: str
) -> None:
    body: dict[str, Any] = {"model": "m"}
    body.update({"messages": _messages(1)} if path.endswith("chat/completions") else {"prompt": "p"})
    body.update(fields)
    before = _rejected(reason)
    err = _err(await gw.post(path, content=orjson.dumps(body)))
    assert (err["param"], err["code"]) == (param, code)
    assert up.hits() == 0
    assert _rejected(reason) - before == 1


async def test_values_at_the_bounds_pass_through_untouched(gw, up) -> None:  # type: ignore[no-untyped-def]
    body = orjson.dumps({
        "model": "m", "n": 4, "max_tokens": 100, "max_completion_tokens": 100,
        "messages": [{"role": "narrator", "content": "x", "mood": "calm"}, *_messages(2)],
        "top_k": 5, "my_extension": {"depth": _nested(7)},  # 8 levels with the top-level object and my_extension
    })
    r = await gw.post("/v1/chat/completions", content=body)
    assert r.status_code == 200, r.text
    assert up.seen[0].body == body  # the client's bytes: unknown fields and a custom role untouched
    r = await gw.post("/v1/completions", content=orjson.dumps({"model": "m", "prompt": ["a", "b", "c"], "best_of": 4}))
    assert r.status_code == 200, r.text


async def test_brackets_inside_strings_are_not_nesting(gw, up) -> None:  # type: ignore[no-untyped-def]
    # more brackets than the limit (8), all inside a string: the body is two levels deep
    body = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "[{" * 20}]})
    r = await gw.post("/v1/chat/completions", content=body)
    assert r.status_code == 200, r.text
    assert up.seen[0].body == body


async def test_a_limit_of_zero_is_no_limit(gateway, up) -> None:  # type: ignore[no-untyped-def]
    off = {"max_n": 0, "max_tokens": 0, "max_messages": 0, "max_body_depth": 0}
    async with gateway([{"name": "m", "urls": [up.url]}], limits=off) as (_, client):
        body = {"model": "m", "n": 1000, "max_tokens": 10**7, "messages": _messages(50), "x": _nested(100)}
        r = await client.post("/v1/chat/completions", content=orjson.dumps(body))
        assert r.status_code == 200, r.text


async def test_default_limits_take_ordinary_requests(gateway, up) -> None:  # type: ignore[no-untyped-def]
    defaults = LimitsSettings()
    assert (defaults.max_n, defaults.max_tokens, defaults.max_messages, defaults.max_body_depth) == (
        128, 131072, 2048, 64)
    async with gateway([{"name": "m", "urls": [up.url]}]) as (_, client):
        body = {"model": "m", "n": 128, "max_tokens": 131072, "messages": _messages(2048), "x": _nested(64)}
        r = await client.post("/v1/chat/completions", content=orjson.dumps(body))
        assert r.status_code == 200, r.text
        body["n"] = 129
        assert _err(await client.post("/v1/chat/completions", content=orjson.dumps(body)))["param"] == "n"
