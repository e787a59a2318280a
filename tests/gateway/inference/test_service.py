"""gateway/inference/service.py through the app: pass-through, streaming relay, validation, limits, errors."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from aiohttp import web
from prometheus_client import REGISTRY

from gateway.errors import UpstreamBroken, error_frame
from models.wire.sse import DONE

CHAT_OK = (
    b'{"id":"chatcmpl-1", "object":"chat.completion","model":"served",'
    b'"choices":[{"index":0,"message":{"role":"assistant","content":"h\xc3\xa9llo \xf0\x9f\x8c\x8d"},'
    b'"finish_reason":"stop"}],\n  "usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}'
)
CMPL_OK = b'{"id":"cmpl-1","object":"text_completion","choices":[{"index":0,"text":" world","finish_reason":"stop"}]}'
SSE_EVENTS = [
    b'data: {"choices":[{"delta":{"role":"assistant","content":""}}]}\n\n',
    'data: {"choices":[{"delta":{"content":"日本語 🌍"}}]}\n\n'.encode(),
    b'data: {"choices":[{"delta":{},"finish_reason":"stop"}]}\n\n',
    b"data: [DONE]\n\n",
]
SSE_BODY = b"".join(SSE_EVENTS)
CLIENT_BODY = (
    b'{"model": "m",  "messages": [{"role": "user", "content": "h\\u00e9 \xe6\x97\xa5"}],'
    b' "top_k": 7, "structured_outputs": {"choice": ["a", "b"]}, "temperature": 0.25}'
)
HEX32 = re.compile(r"^[0-9a-f]{32}$")


async def _write_in_odd_pieces(request: web.Request, data: bytes, piece: int = 7) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    for i in range(0, len(data), piece):
        await resp.write(data[i : i + piece])
    await resp.write_eof()
    return resp


async def chat_handler(request: web.Request) -> web.StreamResponse:
    body = await request.json()
    if body.get("stream"):
        return await _write_in_odd_pieces(request, SSE_BODY)
    return web.Response(body=CHAT_OK, content_type="application/json")


async def completions_handler(request: web.Request) -> web.Response:
    return web.Response(body=CMPL_OK, content_type="application/json")


async def models_handler(request: web.Request) -> web.Response:
    return web.json_response({"object": "list", "data": []})


ROUTES = {
    "POST /v1/chat/completions": chat_handler,
    "POST /v1/completions": completions_handler,
    "GET /v1/models": models_handler,
}


@pytest.fixture
async def up(start_upstream):  # type: ignore[no-untyped-def]
    return await start_upstream(ROUTES)


@pytest.fixture
async def gw(gateway, up):  # type: ignore[no-untyped-def]
    async with gateway([{"name": "m", "urls": [up.url]}], max_body_bytes=1000) as (_, client):
        yield client


def _err(resp: Any) -> dict[str, Any]:
    body = resp.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]  # type: ignore[no-any-return]


# ---------------------------------------------------------------- pass-through


async def test_chat_pass_through_is_byte_exact(gw, up) -> None:  # type: ignore[no-untyped-def]
    r = await gw.post("/v1/chat/completions", content=CLIENT_BODY, headers={"content-type": "application/json"})
    assert r.status_code == 200
    assert r.content == CHAT_OK
    assert r.headers["content-type"] == "application/json"
    assert up.seen[0].path == "/v1/chat/completions"
    assert up.seen[0].body == CLIENT_BODY  # the client's own bytes, unknown fields included


async def test_response_headers(gw) -> None:  # type: ignore[no-untyped-def]
    r = await gw.post("/v1/chat/completions", content=CLIENT_BODY)
    assert HEX32.match(r.headers["x-request-id"])
    overhead = float(r.headers["x-aligngate-overhead-ms"])
    assert 0.0 <= overhead < 1000.0
    assert r.headers["x-aligngate-arm"] == "control"
    again = await gw.post("/v1/chat/completions", content=CLIENT_BODY)
    assert again.headers["x-request-id"] != r.headers["x-request-id"]


async def test_client_request_id_is_echoed(gw) -> None:  # type: ignore[no-untyped-def]
    r = await gw.post("/v1/chat/completions", content=CLIENT_BODY, headers={"X-Request-Id": "my-trace-42"})
    assert r.headers["x-request-id"] == "my-trace-42"


async def test_completions_pass_through(gw, up) -> None:  # type: ignore[no-untyped-def]
    body = b'{"model":"m","prompt":"hello","echo":false,"ignore_eos":true}'
    r = await gw.post("/v1/completions", content=body)
    assert r.status_code == 200
    assert r.content == CMPL_OK
    assert up.seen[0].path == "/v1/completions"
    assert up.seen[0].body == body


async def test_completions_with_prompt_embeds(gw, up) -> None:  # type: ignore[no-untyped-def]
    r = await gw.post("/v1/completions", json={"model": "m", "prompt_embeds": "AAAA"})
    assert r.status_code == 200
    assert up.hits("/v1/completions") == 1


async def test_models_lists_backends(gateway, up) -> None:  # type: ignore[no-untyped-def]
    backends = [{"name": "m", "urls": [up.url]}, {"name": "other", "urls": [up.url]}]
    async with gateway(backends) as (_, client):
        r = await client.get("/v1/models")
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "list"
    assert [(m["id"], m["object"], m["owned_by"]) for m in body["data"]] == [
        ("m", "model", "aligngate"), ("other", "model", "aligngate")
    ]
    assert all(isinstance(m["created"], int) and m["created"] > 1_600_000_000 for m in body["data"])


# ---------------------------------------------------------------- streaming


async def test_stream_relayed_byte_exact(gw, up) -> None:  # type: ignore[no-untyped-def]
    body = b'{"model":"m","messages":[{"role":"user","content":"x"}],"stream":true}'
    r = await gw.post("/v1/chat/completions", content=body)
    assert r.status_code == 200
    assert r.content == SSE_BODY
    assert r.headers["content-type"].startswith("text/event-stream")
    assert r.headers["cache-control"] == "no-cache"
    assert r.headers["x-accel-buffering"] == "no"
    assert r.headers["x-aligngate-arm"] == "control"
    assert up.seen[0].body == body


async def _cut_stream(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    await resp.write(SSE_EVENTS[0] + SSE_EVENTS[1] + b'data: {"choices":[{"delta":{"content":"\xe6\x97')
    await asyncio.sleep(0.02)
    assert request.transport is not None
    request.transport.close()
    return resp


async def _no_done_stream(request: web.Request) -> web.StreamResponse:
    return await _write_in_odd_pieces(request, b"".join(SSE_EVENTS[:3]))


async def test_stream_cut_ends_with_error_frame_and_done(start_upstream, gateway) -> None:  # type: ignore[no-untyped-def]
    up = await start_upstream({"POST /v1/chat/completions": _cut_stream})
    async with gateway([{"name": "m", "urls": [up.url]}]) as (_, client):
        r = await client.post("/v1/chat/completions", json={"model": "m", "messages": [], "stream": True} | {
            "messages": [{"role": "user", "content": "x"}]
        })
    assert r.status_code == 200
    frame = error_frame(UpstreamBroken("Backend 'm' broke off the response mid-stream."))
    # the half event (and half character) is dropped; whole events, then the error frame, then [DONE]
    assert r.content == SSE_EVENTS[0] + SSE_EVENTS[1] + frame + DONE
    r.content.decode("utf-8")


async def test_stream_without_done_ends_with_error_frame(start_upstream, gateway) -> None:  # type: ignore[no-untyped-def]
    up = await start_upstream({"POST /v1/chat/completions": _no_done_stream})
    async with gateway([{"name": "m", "urls": [up.url]}]) as (_, client):
        r = await client.post("/v1/chat/completions", json={
            "model": "m", "messages": [{"role": "user", "content": "x"}], "stream": True
        })
    frame = error_frame(UpstreamBroken("Backend 'm' ended the stream without [DONE]."))
    assert r.content == b"".join(SSE_EVENTS[:3]) + frame + DONE


async def _tricky_cut_stream(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    await resp.write(b'data: {"choices":[{"delta":{"content":"SSE ends with data: [DONE]"}}]}\n\n')
    await asyncio.sleep(0.02)
    assert request.transport is not None
    request.transport.close()
    return resp


async def test_stream_cut_after_content_mentioning_done(start_upstream, gateway) -> None:  # type: ignore[no-untyped-def]
    up = await start_upstream({"POST /v1/chat/completions": _tricky_cut_stream})
    async with gateway([{"name": "m", "urls": [up.url]}]) as (_, client):
        r = await client.post("/v1/chat/completions", json={
            "model": "m", "messages": [{"role": "user", "content": "x"}], "stream": True
        })
    assert r.content.endswith(DONE)
    assert b"upstream_stream_broken" in r.content


async def test_stream_refused_upstream_is_plain_json(start_upstream, gateway) -> None:  # type: ignore[no-untyped-def]
    async def refuse(request: web.Request) -> web.Response:
        return web.Response(status=400, body=b"context too long", content_type="text/plain")

    up = await start_upstream({"POST /v1/chat/completions": refuse})
    async with gateway([{"name": "m", "urls": [up.url]}]) as (_, client):
        r = await client.post("/v1/chat/completions", json={
            "model": "m", "messages": [{"role": "user", "content": "x"}], "stream": True
        })
    assert r.status_code == 400
    assert r.headers["content-type"] == "application/json"
    assert r.json() == {"error": {"message": "context too long", "type": "upstream_error", "param": None, "code": 400}}


# ---------------------------------------------------------------- 400 / 404 / 413


@pytest.mark.parametrize(
    ("content", "code", "param"),
    [
        (b'{"model": "m", "messages": [', "invalid_json", None),
        (b"not json at all", "invalid_json", None),
        (b"", "invalid_json", None),
        (b"[1, 2]", "invalid_value", None),
        (b'"a string"', "invalid_value", None),
        (b"null", "invalid_value", None),
        (b'{"model": "m", "messages": "hi"}', "invalid_value", "messages"),
        (b'{"model": "m", "messages": [{"role": "user"}], "stream": "yes"}', "invalid_value", "stream"),
        (b'{"model": "m", "messages": [{"role": "user"}], "n": "2"}', "invalid_value", "n"),
        (b'{"model": 3, "messages": [{"role": "user"}]}', "invalid_value", "model"),
        (b'{"model": "m", "messages": [{"role": 1}]}', "invalid_value", "messages.0.role"),
        (b'{"model": "m", "messages": []}', "invalid_value", "messages"),
        (b'{"model": "m"}', "missing_required_parameter", "messages"),
        (b'{"messages": [{"role": "user"}]}', "missing_required_parameter", "model"),
    ],
    ids=[
        "truncated", "garbage", "empty", "array", "string", "null", "messages-str", "stream-str", "n-str",
        "model-int", "role-int", "messages-empty", "no-messages", "no-model",
    ],
)
async def test_bad_chat_requests_are_400(gw, up, content: bytes, code: str, param: str | None) -> None:  # type: ignore[no-untyped-def]
    r = await gw.post("/v1/chat/completions", content=content, headers={"content-type": "application/json"})
    assert r.status_code == 400
    err = _err(r)
    assert err["type"] == "invalid_request_error"
    assert err["code"] == code
    assert err["param"] == param
    assert err["message"]
    assert "Traceback" not in r.text
    assert HEX32.match(r.headers["x-request-id"])
    assert "x-aligngate-arm" not in r.headers
    assert up.hits() == 0


async def test_missing_messages_message(gw) -> None:  # type: ignore[no-untyped-def]
    r = await gw.post("/v1/chat/completions", json={"model": "m"})
    assert _err(r)["message"] == "Missing required parameter: 'messages'."


async def test_completions_missing_prompt(gw, up) -> None:  # type: ignore[no-untyped-def]
    r = await gw.post("/v1/completions", json={"model": "m", "max_tokens": 5})
    assert r.status_code == 400
    assert _err(r) == {
        "message": "Missing required parameter: 'prompt'.",
        "type": "invalid_request_error",
        "param": "prompt",
        "code": "missing_required_parameter",
    }
    assert up.hits() == 0


async def test_unknown_model_is_404(gw, up) -> None:  # type: ignore[no-untyped-def]
    r = await gw.post("/v1/chat/completions", json={"model": "gpt-9", "messages": [{"role": "user"}]})
    assert r.status_code == 404
    assert _err(r) == {
        "message": "The model 'gpt-9' does not exist; GET /v1/models lists the served models.",
        "type": "invalid_request_error",
        "param": "model",
        "code": "model_not_found",
    }
    r2 = await gw.post("/v1/completions", json={"model": "gpt-9", "prompt": "x"})
    assert r2.status_code == 404
    assert up.hits() == 0


def _padded(total: int) -> bytes:
    head = b'{"model":"m","messages":[{"role":"user","content":"'
    tail = b'"}]}'
    return head + b"x" * (total - len(head) - len(tail)) + tail


async def test_body_at_the_limit_is_accepted(gw, up) -> None:  # type: ignore[no-untyped-def]
    body = _padded(1000)
    assert len(body) == 1000
    r = await gw.post("/v1/chat/completions", content=body)
    assert r.status_code == 200
    assert up.seen[0].body == body


async def test_too_large_with_content_length(gw, up) -> None:  # type: ignore[no-untyped-def]
    r = await gw.post("/v1/chat/completions", content=_padded(1001))
    assert r.status_code == 413
    assert _err(r) == {
        "message": "Request body of 1001 bytes exceeds the limit of 1000 bytes.",
        "type": "invalid_request_error",
        "param": None,
        "code": "request_too_large",
    }
    assert up.hits() == 0


async def test_too_large_chunked(gw, up) -> None:  # type: ignore[no-untyped-def]
    body = _padded(1500)

    async def gen() -> AsyncIterator[bytes]:
        for i in range(0, len(body), 100):
            yield body[i : i + 100]

    r = await gw.post("/v1/chat/completions", content=gen())
    assert r.status_code == 413
    assert _err(r)["message"] == "Request body exceeds the limit of 1000 bytes."
    assert _err(r)["code"] == "request_too_large"
    assert up.hits() == 0


async def test_chunked_body_under_the_limit_is_forwarded(gw, up) -> None:  # type: ignore[no-untyped-def]
    body = _padded(900)

    async def gen() -> AsyncIterator[bytes]:
        for i in range(0, len(body), 64):
            yield body[i : i + 64]

    r = await gw.post("/v1/chat/completions", content=gen())
    assert r.status_code == 200
    assert up.seen[0].body == body


# ---------------------------------------------------------------- upstream_model


async def test_upstream_model_rewrites_only_the_model(gateway, up) -> None:  # type: ignore[no-untyped-def]
    sent = {
        "model": "m",
        "messages": [{"role": "user", "content": "日本語 🌍"}],
        "top_k": 7,
        "structured_outputs": {"choice": ["a", "b"]},
        "temperature": 0.25,
        "stop": ["\n\n"],
        "logit_bias": {"42": -1.5},
    }
    async with gateway([{"name": "m", "urls": [up.url], "upstream_model": "org/served-7b"}]) as (_, client):
        r = await client.post("/v1/chat/completions", json=sent)
        assert r.status_code == 200
        assert r.content == CHAT_OK
        s = await client.post("/v1/chat/completions", json=sent | {"stream": True})
        assert s.content == SSE_BODY
    assert orjson.loads(up.seen[0].body) == sent | {"model": "org/served-7b"}
    assert orjson.loads(up.seen[1].body) == sent | {"model": "org/served-7b", "stream": True}


async def test_upstream_model_keeps_big_integers(gateway, up) -> None:  # type: ignore[no-untyped-def]
    body = (
        b'{"model":"m","messages":[{"role":"user","content":"x"}],'
        b'"vllm_xargs":{"id":123456789012345678901234567890}}'
    )
    async with gateway([{"name": "m", "urls": [up.url], "upstream_model": "served"}]) as (_, client):
        r = await client.post("/v1/chat/completions", content=body)
    assert r.status_code == 200
    assert b'"id":123456789012345678901234567890' in up.seen[0].body


# ---------------------------------------------------------------- upstream errors


async def _start_status(start_upstream, status: int, body: bytes, content_type: str):  # type: ignore[no-untyped-def]
    async def handler(request: web.Request) -> web.Response:
        return web.Response(status=status, body=body, content_type=content_type)

    return await start_upstream({"POST /v1/chat/completions": handler})


CHAT_REQ = {"model": "m", "messages": [{"role": "user", "content": "x"}]}


async def test_upstream_non_json_error_is_wrapped(start_upstream, gateway) -> None:  # type: ignore[no-untyped-def]
    up = await _start_status(start_upstream, 500, b"  upstream exploded\n", "text/plain")
    async with gateway([{"name": "m", "urls": [up.url]}]) as (_, client):
        r = await client.post("/v1/chat/completions", json=CHAT_REQ)
    assert r.status_code == 500
    assert r.headers["content-type"] == "application/json"
    assert r.json() == {"error": {"message": "upstream exploded", "type": "upstream_error", "param": None, "code": 500}}
    assert up.hits() == 1  # 500 is not retried


async def test_upstream_503_after_retries_is_relayed(start_upstream, gateway) -> None:  # type: ignore[no-untyped-def]
    up = await _start_status(start_upstream, 503, b"", "text/plain")
    async with gateway([{"name": "m", "urls": [up.url], "retries": 1}]) as (_, client):
        r = await client.post("/v1/chat/completions", json=CHAT_REQ)
    assert r.status_code == 503
    assert r.json() == {
        "error": {"message": "Upstream answered HTTP 503.", "type": "upstream_error", "param": None, "code": 503}
    }
    assert up.hits() == 2


async def test_vllm_old_error_shape_is_normalised(start_upstream, gateway) -> None:  # type: ignore[no-untyped-def]
    old = b'{"object":"error","message":"max_tokens is too large","type":"BadRequestError","param":null,"code":400}'
    up = await _start_status(start_upstream, 400, old, "application/json")
    async with gateway([{"name": "m", "urls": [up.url]}]) as (_, client):
        r = await client.post("/v1/chat/completions", json=CHAT_REQ)
    assert r.status_code == 400
    assert r.json() == {
        "error": {"message": "max_tokens is too large", "type": "BadRequestError", "param": None, "code": 400}
    }


async def test_openai_shaped_upstream_error_is_relayed_as_is(start_upstream, gateway) -> None:  # type: ignore[no-untyped-def]
    err = b'{"error": {"message": "nope", "type": "invalid_request_error", "param": "n", "code": null}}'
    up = await _start_status(start_upstream, 422, err, "application/json")
    async with gateway([{"name": "m", "urls": [up.url]}]) as (_, client):
        r = await client.post("/v1/chat/completions", json=CHAT_REQ)
    assert r.status_code == 422
    assert r.content == err


async def test_unreachable_upstream_is_502(gateway, closed_url) -> None:  # type: ignore[no-untyped-def]
    async with gateway([{"name": "m", "urls": [closed_url], "retries": 1}]) as (_, client):
        r = await client.post("/v1/chat/completions", json=CHAT_REQ)
        s = await client.post("/v1/chat/completions", json=CHAT_REQ | {"stream": True})
    assert r.status_code == 502
    err = _err(r)
    assert err["type"] == "upstream_error" and err["code"] == "upstream_unavailable"
    assert err["message"].startswith("Backend 'm' is unreachable")
    assert s.status_code == 502 and _err(s)["code"] == "upstream_unavailable"
    assert r.headers["x-aligngate-arm"] == "control"


async def test_upstream_timeout_is_504(start_upstream, gateway) -> None:  # type: ignore[no-untyped-def]
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(5)
        return web.Response(body=CHAT_OK)

    up = await start_upstream({"POST /v1/chat/completions": slow})
    async with gateway([{"name": "m", "urls": [up.url], "timeout_s": 0.1}]) as (_, client):
        r = await client.post("/v1/chat/completions", json=CHAT_REQ)
    assert r.status_code == 504
    assert _err(r) == {
        "message": "Backend 'm' did not answer within 0.1s.", "type": "upstream_error", "param": None,
        "code": "upstream_timeout",
    }
    assert up.hits() == 1


# ---------------------------------------------------------------- auth


async def test_api_keys_guard_the_v1_routes(gateway, up) -> None:  # type: ignore[no-untyped-def]
    async with gateway([{"name": "m", "urls": [up.url]}], api_keys=["client-key"]) as (_, client):
        missing = await client.post("/v1/chat/completions", json=CHAT_REQ)
        wrong = await client.post("/v1/chat/completions", json=CHAT_REQ, headers={"Authorization": "Bearer nope"})
        ok = await client.post("/v1/chat/completions", json=CHAT_REQ, headers={"Authorization": "Bearer client-key"})
        models = await client.get("/v1/models")
        models_ok = await client.get("/v1/models", headers={"Authorization": "Bearer client-key"})
        health = await client.get("/healthz")
    assert missing.status_code == 401 and _err(missing)["code"] == "missing_api_key"
    assert _err(missing)["type"] == "authentication_error"
    assert wrong.status_code == 401 and _err(wrong)["message"] == "Invalid API key."
    assert ok.status_code == 200 and ok.content == CHAT_OK
    assert models.status_code == 401
    assert models_ok.status_code == 200
    assert health.status_code == 200
    assert up.hits("/v1/chat/completions") == 1
    assert "Authorization" not in up.seen[0].headers  # the client's key is not forwarded upstream


async def test_auth_checked_before_the_body(gateway, up) -> None:  # type: ignore[no-untyped-def]
    async with gateway([{"name": "m", "urls": [up.url]}], api_keys=["k"]) as (_, client):
        r = await client.post("/v1/chat/completions", content=b"{not json")
    assert r.status_code == 401


# ---------------------------------------------------------------- client going away mid-upload


def _http_scope(path: str, headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    return {
        "type": "http", "asgi": {"version": "3.0", "spec_version": "2.4"}, "http_version": "1.1",
        "method": "POST", "scheme": "http", "path": path, "raw_path": path.encode(), "root_path": "",
        "query_string": b"", "headers": headers, "client": ("127.0.0.1", 5555), "server": ("gateway", 80),
    }


async def test_client_disconnect_during_upload_is_499(gateway, up, caplog) -> None:  # type: ignore[no-untyped-def]
    async with gateway([{"name": "m", "urls": [up.url]}]) as (app, _):
        messages = iter([
            {"type": "http.request", "body": b'{"model": "m", "mess', "more_body": True},
            {"type": "http.disconnect"},
        ])

        async def receive() -> dict[str, Any]:
            return next(messages)

        sent: list[dict[str, Any]] = []

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        labels = {"model": "unknown", "arm": "none"}
        before_499 = REGISTRY.get_sample_value("aligngate_requests_total", labels | {"status": "499"}) or 0.0
        with caplog.at_level(logging.ERROR):
            await app(_http_scope("/v1/chat/completions", [(b"content-length", b"500")]), receive, send)
        after_499 = REGISTRY.get_sample_value("aligngate_requests_total", labels | {"status": "499"}) or 0.0
    assert up.hits() == 0
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert after_499 - before_499 == 1.0


# ---------------------------------------------------------------- helpers of the service
