"""gateway/respond.py: relaying an upstream's answer (whole, headers, error bodies), the stream headers, and
watching for the client's disconnect while an answer is awaited."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from starlette.responses import StreamingResponse

from gateway.errors import ClientDisconnected
from gateway.respond import (
    WATCH_AFTER_S,
    normalize_error_body,
    relay_result,
    sse_headers,
    until_disconnect,
    upstream_headers,
)
from gateway.upstream.protocol import UpstreamResult


def _receiver(*messages: dict[str, Any]) -> Any:
    it = iter(messages)

    async def receive() -> dict[str, Any]:
        return next(it)

    return receive


def test_normalize_error_body() -> None:
    openai = b'{"error":{"message":"m","type":"t","param":null,"code":null}}'
    assert normalize_error_body(400, openai) is openai
    assert orjson.loads(normalize_error_body(502, b"Bad Gateway")) == {
        "error": {"message": "Bad Gateway", "type": "upstream_error", "param": None, "code": 502}
    }
    assert orjson.loads(normalize_error_body(503, b"   ")) == {
        "error": {"message": "Upstream answered HTTP 503.", "type": "upstream_error", "param": None, "code": 503}
    }
    assert orjson.loads(normalize_error_body(500, b"x" * 5000))["error"]["message"] == "x" * 1000
    assert orjson.loads(normalize_error_body(500, b"[1, 2]")) == {
        "error": {"message": "Upstream answered HTTP 500.", "type": "upstream_error", "param": None, "code": 500}
    }
    old = b'{"object":"error","message":"too long","type":"BadRequestError","param":"messages","code":400}'
    assert orjson.loads(normalize_error_body(400, old)) == {
        "error": {"message": "too long", "type": "BadRequestError", "param": "messages", "code": 400}
    }
    minimal = b'{"message":"boom"}'
    assert orjson.loads(normalize_error_body(500, minimal)) == {
        "error": {"message": "boom", "type": "upstream_error", "param": None, "code": 500}
    }
    assert orjson.loads(normalize_error_body(500, b"\xff\xfe broken"))["error"]["message"] == "\ufffd\ufffd broken"


def test_relay_result() -> None:
    ok = relay_result(UpstreamResult(200, "application/json", b'{"a": 1}', 0))
    assert (ok.status_code, ok.body, ok.media_type) == (200, b'{"a": 1}', "application/json")
    untyped = relay_result(UpstreamResult(200, "", b"{}", 0))
    assert untyped.media_type == "application/json"
    err = relay_result(UpstreamResult(500, "text/html", b"<h1>oops</h1>", 1))
    assert err.status_code == 500
    assert err.media_type == "application/json"
    assert orjson.loads(err.body)["error"]["message"] == "<h1>oops</h1>"


def test_upstream_headers_pass_on_all_but_framing_and_rename_the_request_id() -> None:
    raw = (
        (b"Content-Type", b"application/json"), (b"Content-Length", b"12"), (b"Date", b"today"),
        (b"Server", b"uvicorn"), (b"Connection", b"keep-alive"), (b"Transfer-Encoding", b"chunked"),
        (b"X-Request-Id", b"up-1"), (b"openai-processing-ms", b"17"), (b"Cache-Control", b"no-store"),
        (b"Set-Cookie", b"a=1"), (b"Set-Cookie", b"b=2"), (b"x-aligngate-arm", b"align"),
    )
    assert upstream_headers(raw) == [
        (b"x-upstream-request-id", b"up-1"), (b"openai-processing-ms", b"17"), (b"cache-control", b"no-store"),
        (b"set-cookie", b"a=1"), (b"set-cookie", b"b=2"),
    ]
    relayed = relay_result(UpstreamResult(200, "application/json", b"{}", 0, raw))
    assert relayed.raw_headers[2:] == upstream_headers(raw)
    assert dict(relayed.raw_headers[:2]) == {b"content-length": b"2", b"content-type": b"application/json"}


def test_sse_headers_are_starlettes() -> None:
    async def nothing() -> AsyncIterator[bytes]:
        yield b""

    reference = StreamingResponse(
        nothing(), media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )
    assert sse_headers([]) == reference.raw_headers
    # the upstream's own cache-control wins; what it passes on follows
    assert sse_headers([(b"cache-control", b"no-store"), (b"x-upstream-request-id", b"u")]) == [
        (b"x-accel-buffering", b"no"), (b"content-type", b"text/event-stream; charset=utf-8"),
        (b"cache-control", b"no-store"), (b"x-upstream-request-id", b"u"),
    ]


async def test_until_disconnect_returns_the_result_and_stops_watching() -> None:
    watched = asyncio.Event()

    async def receive() -> dict[str, Any]:
        watched.set()
        await asyncio.sleep(30)
        return {"type": "http.disconnect"}

    async def work() -> int:
        await watched.wait()
        return 7

    assert await until_disconnect(receive, work(), watch_after_s=0) == 7
    with pytest.raises(ClientDisconnected):
        await until_disconnect(_receiver({"type": "http.disconnect"}), asyncio.sleep(30))


async def test_until_disconnect_makes_no_watcher_for_a_quick_answer() -> None:
    async def receive() -> dict[str, Any]:
        raise AssertionError("receive must not be called")

    async def quick() -> str:
        await asyncio.sleep(0)
        return "done"

    assert await until_disconnect(receive, quick()) == "done"
    await asyncio.sleep(WATCH_AFTER_S * 2)  # the timer was cancelled: nothing starts later either
