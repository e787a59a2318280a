"""gateway/middleware.py in isolation: request ids, timing headers, metrics hook, the last-resort 500."""

from __future__ import annotations

import asyncio
import os
import re
import time
import uuid
from typing import Any

import httpx
import orjson
import pytest
from prometheus_client import REGISTRY
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route, Router

from gateway.context import RequestContext, get_context
from gateway.errors import internal_error_body
from gateway.middleware import RequestMiddleware, new_request_id

HEX32 = re.compile(r"^[0-9a-f]{32}$")
MODEL = f"mw-{uuid.uuid4().hex[:8]}"  # a label value of this module's own


async def plain(request: Request) -> Response:
    return Response(b"ok")


async def with_arm(request: Request) -> Response:
    ctx = get_context(request)
    ctx.model, ctx.arm = MODEL, "rewrite+align"
    return Response(b"armed")


async def waits_upstream(request: Request) -> Response:
    ctx = get_context(request)
    t = asyncio.get_running_loop().time()
    await asyncio.sleep(0.2)
    ctx.upstream_s += asyncio.get_running_loop().time() - t
    return Response(b"waited")


async def busy(request: Request) -> Response:
    await asyncio.sleep(0.2)  # not marked as an upstream wait: counts as the gateway's own time
    return Response(b"busy")


async def fails(request: Request) -> Response:
    raise RuntimeError("kaboom")


async def fails_mid_stream(request: Request) -> StreamingResponse:
    get_context(request).model = MODEL

    async def body() -> Any:
        yield b"first"
        raise RuntimeError("mid-stream")

    return StreamingResponse(body())


async def context(request: Request) -> Response:
    ctx = get_context(request)
    return Response(orjson.dumps({"rid": ctx.request_id, "started": ctx.started}))


# A bare router (no ServerErrorMiddleware of its own), as RequestMiddleware sees the app inside FastAPI.
app = RequestMiddleware(
    Router(
        routes=[
            Route("/plain", plain),
            Route("/v1/plain", plain),
            Route("/v1/arm", with_arm),
            Route("/v1/wait", waits_upstream),
            Route("/v1/busy", busy),
            Route("/v1/fail", fails),
            Route("/v1/fail-stream", fails_mid_stream),
            Route("/ctx", context),
        ]
    )
)


@pytest.fixture
async def client() -> httpx.AsyncClient:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://mw") as c:
        yield c


async def _raw(path: str, headers: list[tuple[bytes, bytes]]) -> list[dict[str, Any]]:
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
        "path": path, "raw_path": path.encode(), "root_path": "", "query_string": b"", "headers": headers,
        "client": ("127.0.0.1", 1), "server": ("mw", 80),
    }
    sent: list[dict[str, Any]] = []
    requested = False
    finished = asyncio.Event()

    async def receive() -> dict[str, Any]:
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await finished.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    try:
        await asyncio.wait_for(app(scope, receive, send), 5)
    finally:
        finished.set()
    return sent


def _header(start: dict[str, Any], name: bytes) -> list[bytes]:
    return [v for k, v in start["headers"] if k == name]


def _requests(status: str, model: str = "unknown", arm: str = "none") -> float:
    return REGISTRY.get_sample_value("aligngate_requests_total", {"model": model, "arm": arm, "status": status}) or 0.0


async def test_generated_request_id(client: httpx.AsyncClient) -> None:
    r = await client.get("/plain")
    assert r.status_code == 200 and r.content == b"ok"
    assert HEX32.match(r.headers["x-request-id"])
    assert "x-aligngate-arm" not in r.headers


async def test_request_id_is_in_the_context(client: httpx.AsyncClient) -> None:
    r = await client.get("/ctx", headers={"X-Request-Id": "abc-123"})
    assert r.json()["rid"] == "abc-123"
    assert r.headers["x-request-id"] == "abc-123"


@pytest.mark.parametrize(
    ("value", "kept"),
    [
        (b"client-id.42", True),
        (b"x" * 128, True),
        (b"x" * 129, False),
        (b"", False),
        ("é".encode(), False),
        (b"tab\there", False),
    ],
    ids=["sane", "max-len", "too-long", "empty", "non-ascii", "control-char"],
)
async def test_client_request_id_only_when_sane(value: bytes, kept: bool) -> None:
    start, *_ = await _raw("/plain", [(b"x-request-id", value)])
    [rid] = _header(start, b"x-request-id")
    if kept:
        assert rid == value
    else:
        assert HEX32.match(rid.decode())


async def test_exactly_one_request_id_header(client: httpx.AsyncClient) -> None:
    start, *_ = await _raw("/plain", [(b"x-request-id", b"a"), (b"x-request-id", b"b")])
    assert _header(start, b"x-request-id") == [b"a"]


async def test_arm_header_once_the_arm_is_known(client: httpx.AsyncClient) -> None:
    r = await client.get("/v1/arm")
    assert r.headers["x-aligngate-arm"] == "rewrite+align"


async def test_overhead_excludes_upstream_waits(client: httpx.AsyncClient) -> None:
    waited = await client.get("/v1/wait")
    busy_ = await client.get("/v1/busy")
    assert float(waited.headers["x-aligngate-overhead-ms"]) < 100.0
    assert float(busy_.headers["x-aligngate-overhead-ms"]) >= 190.0
    assert re.fullmatch(r"\d+\.\d{3}", waited.headers["x-aligngate-overhead-ms"])


def test_overhead_never_negative() -> None:
    ctx = RequestContext(request_id="r", started=10.0, upstream_s=5.0, client_s=6.0)
    assert ctx.overhead_s(now=12.0) == 0.0
    ctx2 = RequestContext(request_id="r", started=10.0, upstream_s=0.5, client_s=0.25)
    assert ctx2.overhead_s(now=12.0) == pytest.approx(1.25)


async def test_exception_before_the_response_is_a_clean_500(client: httpx.AsyncClient) -> None:
    before = _requests("500")
    r = await client.get("/v1/fail", headers={"X-Request-Id": "failing-1"})
    assert r.status_code == 500
    assert r.content == internal_error_body()
    assert r.headers["content-type"] == "application/json"
    assert r.headers["x-request-id"] == "failing-1"
    assert "kaboom" not in r.text
    assert _requests("500") - before == 1.0


async def test_exception_after_the_response_started_sends_no_second_start() -> None:
    before = _requests("200", model=MODEL)
    sent = await _raw("/v1/fail-stream", [])
    starts = [m for m in sent if m["type"] == "http.response.start"]
    assert len(starts) == 1 and starts[0]["status"] == 200
    bodies = [m.get("body", b"") for m in sent if m["type"] == "http.response.body"]
    assert b"first" in bodies
    assert internal_error_body() not in bodies
    assert _requests("200", model=MODEL) - before == 1.0  # the status the client saw


async def test_only_v1_paths_are_counted(client: httpx.AsyncClient) -> None:
    before = _requests("200")
    await client.get("/plain")
    await client.get("/ctx")
    assert _requests("200") == before
    await client.get("/v1/plain")
    assert _requests("200") - before == 1.0


async def test_lifespan_and_other_scopes_pass_through() -> None:
    seen: list[str] = []

    async def inner(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append(scope["type"])
        assert "state" not in scope or "ctx" not in scope["state"]

    mw = RequestMiddleware(inner)
    await mw({"type": "lifespan"}, None, None)  # type: ignore[arg-type]
    await mw({"type": "websocket"}, None, None)  # type: ignore[arg-type]
    assert seen == ["lifespan", "websocket"]


def test_new_request_ids_are_time_ordered_uuid7_hex() -> None:
    before = time.time_ns() // 1_000_000
    ids = [new_request_id() for _ in range(1000)]  # more than one pool of random bytes
    after = time.time_ns() // 1_000_000
    assert len(set(ids)) == 1000
    for rid in ids:
        parsed = uuid.UUID(hex=rid)
        assert parsed.version == 7 and parsed.variant == uuid.RFC_4122 and parsed.hex == rid
        assert before <= parsed.int >> 80 <= after
    # sorted by time: a later id never sorts before an earlier millisecond's
    millis = [int(rid[:12], 16) for rid in ids]
    assert millis == sorted(millis)
    # the random part varies in every bit it has (74 bits: 12 after the version, 62 after the variant)
    ors = 0
    for rid in ids:
        ors |= uuid.UUID(hex=rid).int
    assert ors & (0xFFF << 64) == 0xFFF << 64 and ors & (2**62 - 1) == 2**62 - 1


def test_a_forked_child_does_not_reuse_its_parents_random_bits() -> None:
    new_request_id()  # the parent holds a pool
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next id, written to the pipe
        os.write(write, new_request_id().encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    child = os.read(read, 64).decode()
    os.close(read)
    parent = new_request_id()
    assert child[13:16] + child[17:] != parent[13:16] + parent[17:]
