"""The raw-ASGI endpoint of the inference POST routes (gateway/inference/endpoint.py, receive.py): no request
object on the hot path, errors like every other route, and a client that goes away cancels the upstream request."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson
import pytest
from aiohttp import web
from starlette.requests import Request

from gateway.errors import BadRequest, ClientDisconnected, PayloadTooLarge, RequestTimeout
from gateway.inference.receive import RequestHeaders, read_body
from tests.gateway.asgi import hang_up_after

CHAT = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
ANSWER = b'{"id":"c1","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"hi"}}]}'
EVENTS = [b'data: {"choices":[{"delta":{"content":"w%d "}}]}\n\n' % i for i in range(50)]


def _scope(path: str, headers: list[tuple[bytes, bytes]] | None = None, method: str = "POST") -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": headers or [],
        "client": ("127.0.0.1", 5555),
        "server": ("gateway", 80),
    }


class Hanging:
    """An upstream whose answers never come (or come slowly, as a stream), counting what it saw."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.cancelled = 0
        self.events_sent = 0

    async def whole(self, request: web.Request) -> web.Response:
        await request.read()
        self.entered.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return web.Response(body=ANSWER, content_type="application/json")

    async def stream(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        try:
            for event in EVENTS:
                await resp.write(event)
                self.events_sent += 1
                self.entered.set()
                await asyncio.sleep(0.05)
            await resp.write(b"data: [DONE]\n\n")
        except (asyncio.CancelledError, ConnectionResetError):
            self.cancelled += 1
            raise
        return resp


@pytest.fixture
async def hanging(start_upstream):  # type: ignore[no-untyped-def]
    h = Hanging()
    up = await start_upstream({"POST /v1/chat/completions": h.whole, "POST /v1/completions": h.stream})
    return h, up


async def _wait_until(predicate: Any) -> None:
    async with asyncio.timeout(3):
        while not predicate():  # noqa: ASYNC110 - the fakes count, they do not signal
            await asyncio.sleep(0.01)


def _access_line(caplog: pytest.LogCaptureFixture, rid: str) -> str:
    [line] = [r.getMessage() for r in caplog.records if r.name == "aligngate.access" and rid in r.getMessage()]
    return line


# ---------------------------------------------------------------- the raw path is taken, and only for these


async def test_inference_posts_take_the_raw_path(gateway, start_upstream, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    async def chat(request: web.Request) -> web.Response:
        return web.Response(body=ANSWER, content_type="application/json")

    up = await start_upstream({"POST /v1/chat/completions": chat})
    through_starlette: list[str] = []
    original = Request.__init__

    def spy(self: Request, scope: Any, *args: Any, **kwargs: Any) -> None:
        through_starlette.append(f"{scope.get('method')} {scope.get('path')}")
        original(self, scope, *args, **kwargs)

    monkeypatch.setattr(Request, "__init__", spy)
    async with gateway([{"name": "m", "urls": [up.url]}]) as (_, client):
        ok = await client.post("/v1/chat/completions", json=CHAT)
        refused = await client.post("/v1/completions", json={"model": "m"})
        wrong_method = await client.get("/v1/chat/completions")
        models = await client.get("/v1/models")
    assert ok.status_code == 200 and ok.content == ANSWER
    assert ok.headers["x-aligngate-arm"] == "control" and "x-request-id" in ok.headers
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "prompt"
    assert "x-request-id" in refused.headers and "x-aligngate-overhead-ms" in refused.headers
    assert wrong_method.status_code == 405
    assert models.status_code == 200
    assert wrong_method.json()["error"]["message"] == "Method GET not allowed on /v1/chat/completions"
    assert through_starlette == ["GET /v1/models"]  # the router answers the 405 itself


async def test_trailing_slash_is_another_route(gateway, hanging) -> None:  # type: ignore[no-untyped-def]
    _, up = hanging
    async with gateway([{"name": "m", "urls": [up.url]}]) as (_, client):
        r = await client.post("/v1/chat/completions/", json=CHAT)
    assert r.status_code in (307, 404)  # paths match exactly: an unknown route
    assert r.json()["error"]["message"] == "Unknown route: POST /v1/chat/completions/"
    assert up.hits() == 0


# ---------------------------------------------------------------- a client that goes away


async def test_disconnect_while_waiting_cancels_the_upstream(gateway, hanging, caplog) -> None:  # type: ignore[no-untyped-def]
    h, up = hanging
    gone = asyncio.Event()
    receive = hang_up_after(orjson.dumps(CHAT), gone)

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async with gateway([{"name": "m", "urls": [up.url]}]) as (app, _):
        with caplog.at_level(logging.INFO, logger="aligngate.access"):
            call = asyncio.create_task(
                app(_scope("/v1/chat/completions", [(b"x-request-id", b"gone-1")]), receive, send)
            )
            await asyncio.wait_for(h.entered.wait(), 3)
            gone.set()
            await asyncio.wait_for(call, 3)
            await _wait_until(lambda: h.cancelled == 1)
    assert [m["status"] for m in sent if m["type"] == "http.response.start"] == [499]
    assert all(not m.get("body") for m in sent)
    line = _access_line(caplog, "gone-1")
    assert " 499 " in line and "outcome=client_disconnected" in line


async def test_disconnect_mid_stream_stops_the_relay(gateway, hanging, caplog) -> None:  # type: ignore[no-untyped-def]
    h, up = hanging
    gone = asyncio.Event()
    body = orjson.dumps({"model": "m", "prompt": "x", "stream": True})
    receive = hang_up_after(body, gone)

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if sum(1 for m in sent if m.get("body")) == 2:
            gone.set()

    async with gateway([{"name": "m", "urls": [up.url]}]) as (app, _):
        with caplog.at_level(logging.INFO, logger="aligngate.access"):
            await asyncio.wait_for(app(_scope("/v1/completions", [(b"x-request-id", b"gone-2")]), receive, send), 3)
            await _wait_until(lambda: h.cancelled == 1)
    [start] = [m for m in sent if m["type"] == "http.response.start"]
    assert start["status"] == 200
    bodies = [m for m in sent if m["type"] == "http.response.body"]
    assert 2 <= len(bodies) <= 3 and all(m["more_body"] for m in bodies)  # no end frame: the client is gone
    assert h.events_sent < len(EVENTS)
    line = _access_line(caplog, "gone-2")
    assert " 200 " in line and "stream=1" in line and "outcome=client_disconnected" in line


async def test_stream_with_auth_and_its_headers(gateway, start_upstream) -> None:  # type: ignore[no-untyped-def]
    async def stream(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(EVENTS[0] + b"data: [DONE]\n\n")
        return resp

    up = await start_upstream({"POST /v1/chat/completions": stream})
    body = {**CHAT, "stream": True}
    async with gateway([{"name": "m", "urls": [up.url]}], api_keys=["k"]) as (_, client):
        refused = await client.post("/v1/chat/completions", json=body)
        ok = await client.post("/v1/chat/completions", json=body, headers={"Authorization": "Bearer k"})
    assert refused.status_code == 401 and refused.json()["error"]["type"] == "authentication_error"
    assert ok.status_code == 200 and ok.content == EVENTS[0] + b"data: [DONE]\n\n"
    assert ok.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert up.hits() == 1


# ---------------------------------------------------------------- receive.py


def test_request_headers_first_occurrence_latin1() -> None:
    h = RequestHeaders.of(
        [
            (b"host", b"x"),
            (b"authorization", b"Bearer a"),
            (b"authorization", b"Bearer b"),
            (b"content-length", b"12"),
            (b"x-aligngate-user", b"caf\xe9"),
            (b"x-aligngate-arm", b"align"),
            (b"x-aligngate-trace", b"1"),
            (b"x-aligngate-other", b"?"),
            (b"x-aligngate-arm", b"control"),
        ]
    )
    assert h == RequestHeaders("Bearer a", "12", "café", "align", "1")
    assert RequestHeaders.of([]) == RequestHeaders()


def _receiver(*messages: dict[str, Any]) -> Any:
    it = iter(messages)

    async def receive() -> dict[str, Any]:
        return next(it)

    return receive


async def test_read_body_joins_pieces_and_enforces_the_limit() -> None:
    pieces = (
        {"type": "http.request", "body": b"ab", "more_body": True},
        {"type": "http.request", "body": b"", "more_body": True},
        {"type": "http.request", "body": b"cd", "more_body": True},
        {"type": "http.request", "body": b"e"},
    )
    assert await read_body(_receiver(*pieces), None, 5) == b"abcde"
    assert await read_body(_receiver({"type": "http.request", "body": b"abc"}), "3", 3) == b"abc"
    assert await read_body(_receiver({"type": "http.request"}), None, 3) == b""
    with pytest.raises(PayloadTooLarge):
        await read_body(_receiver(*pieces), None, 4)
    with pytest.raises(PayloadTooLarge):
        await read_body(_receiver(), "6", 5)  # refused before reading
    with pytest.raises(BadRequest):
        await read_body(_receiver(), "five", 5)
    with pytest.raises(ClientDisconnected):
        await read_body(_receiver(pieces[0], {"type": "http.disconnect"}), None, 5)


async def test_read_body_times_out_on_a_stalled_body() -> None:
    async def stalls_after_the_first_piece() -> dict[str, Any]:
        if not sent:
            sent.append(True)
            return {"type": "http.request", "body": b'{"a": ', "more_body": True}
        await asyncio.sleep(60)
        raise AssertionError("not reached")

    sent: list[bool] = []
    with pytest.raises(RequestTimeout) as info:
        await read_body(stalls_after_the_first_piece, None, 100, timeout_s=0.05)
    assert (info.value.status, info.value.code) == (408, "request_timeout")
    assert info.value.headers == {"Connection": "close"}
    assert await read_body(_receiver({"type": "http.request", "body": b"ok"}), None, 5, timeout_s=0.05) == b"ok"
