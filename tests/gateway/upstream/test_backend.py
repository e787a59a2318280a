"""gateway/upstream/backend.py against real aiohttp upstreams started inside the tests."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gateway.config import BackendSettings
from gateway.errors import UpstreamBroken, UpstreamTimeout, UpstreamUnavailable
from gateway.upstream.backend import RemoteBackend, UpstreamResult, UpstreamStream
from gateway.upstream.client import make_session

CHAT = "/chat/completions"
BODY = b'{"model":"m","messages":[{"role":"user","content":"hi \xc3\xa9"}],"vllm_extra":{"top_k":3}}'
OK_BODY = b'{"id":"cmpl-1",  "object":"chat.completion",\n "choices":[]}'
SSE = [b'data: {"n":1}\n\n', b'data: {"n":2}\n\n', b"data: [DONE]\n\n"]


def json_handler(status: int, body: bytes, content_type: str = "application/json"):  # type: ignore[no-untyped-def]
    async def handler(request: web.Request) -> web.Response:
        return web.Response(status=status, body=body, content_type=content_type)

    return handler


def counting_handler(status: int, tag: str):  # type: ignore[no-untyped-def]
    n = 0

    async def handler(request: web.Request) -> web.Response:
        nonlocal n
        n += 1
        return web.json_response({"error": {"message": f"{tag} #{n}"}}, status=status)

    return handler


async def sse_handler(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    for event in SSE:
        await resp.write(event)
        await asyncio.sleep(0.001)
    await resp.write_eof()
    return resp


async def aborting_sse_handler(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    await resp.write(SSE[0])
    await asyncio.sleep(0.02)
    assert request.transport is not None
    request.transport.close()  # cut the connection mid-body (no terminating chunk)
    return resp


async def stalling_sse_handler(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    await resp.write(SSE[0])
    await asyncio.sleep(5)
    return resp


async def slow_handler(request: web.Request) -> web.Response:
    await asyncio.sleep(5)
    return web.Response(body=OK_BODY, content_type="application/json")


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    s = make_session()
    yield s
    await s.close()


class Backends:
    """Builds RemoteBackends that record their error-hook calls; closes them at teardown."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self.session = session
        self.errors: list[tuple[str, str]] = []
        self.made: list[RemoteBackend] = []

    def __call__(self, urls: list[str], **kw: Any) -> RemoteBackend:
        settings = BackendSettings(name="m", urls=urls, **kw)
        backend = RemoteBackend(settings, self.session, on_error=lambda name, why: self.errors.append((name, why)))
        self.made.append(backend)
        return backend


@pytest.fixture
async def make(session: aiohttp.ClientSession) -> AsyncIterator[Backends]:
    b = Backends(session)
    yield b
    for backend in b.made:
        await backend.close()


def _in_flight(backend: RemoteBackend) -> list[int]:
    return [r.in_flight for r in backend.pool.replicas]


async def test_fetch_relays_status_and_body_untouched(start_upstream, make) -> None:  # type: ignore[no-untyped-def]
    up = await start_upstream({"POST /v1/chat/completions": json_handler(200, OK_BODY)})
    backend = make([up.url])
    result = await backend.fetch(CHAT, BODY)
    assert isinstance(result, UpstreamResult)
    assert (result.status, result.content_type, result.body, result.replica) == (200, "application/json", OK_BODY, 0)
    [seen] = up.seen
    assert seen.method == "POST"
    assert seen.path == "/v1/chat/completions"
    assert seen.body == BODY
    assert seen.headers["Content-Type"] == "application/json"
    assert "Authorization" not in seen.headers
    assert make.errors == []
    assert _in_flight(backend) == [0]


async def test_upstream_cookies_are_not_kept(start_upstream, make) -> None:  # type: ignore[no-untyped-def]
    async def set_cookie(request: web.Request) -> web.Response:
        resp = web.Response(body=OK_BODY, content_type="application/json")
        resp.set_cookie("session", "one-clients-secret")
        return resp

    up = await start_upstream({"POST /v1/chat/completions": set_cookie})
    by_name = up.url.replace("127.0.0.1", "localhost")  # aiohttp's cookie jar ignores cookies of IP addresses
    backend = make([by_name, by_name])
    for _ in range(3):
        assert (await backend.fetch(CHAT, BODY)).body == OK_BODY
    assert [s.headers.get("Cookie") for s in up.seen] == [None, None, None]
    assert sorted(key[0] for key in backend._urls) == [0, 1]  # one parsed URL per replica and path


@pytest.mark.parametrize("status", [400, 404, 422, 500])
async def test_fetch_relays_non_retryable_errors_once(start_upstream, make, status: int) -> None:  # type: ignore[no-untyped-def]
    up = await start_upstream({"POST /v1/chat/completions": json_handler(status, b"plain text error", "text/plain")})
    backend = make([up.url], retries=3)
    result = await backend.fetch(CHAT, BODY)
    assert (result.status, result.content_type, result.body) == (status, "text/plain", b"plain text error")
    assert up.hits() == 1
    # a 5xx that is not retried is still reported as a failed attempt; the replica stays in rotation
    assert make.errors == ([("m", str(status))] if status >= 500 else [])
    assert backend.pool.replicas[0].consecutive_failures == 0


async def test_retry_on_503_goes_to_the_other_replica(start_upstream, make) -> None:  # type: ignore[no-untyped-def]
    bad = await start_upstream({"POST /v1/chat/completions": counting_handler(503, "bad")})
    good = await start_upstream({"POST /v1/chat/completions": json_handler(200, OK_BODY)})
    backend = make([bad.url, good.url])
    backend.pool.replicas[1].in_flight = 1  # the failing replica is the least busy: tried first
    result = await backend.fetch(CHAT, BODY)
    backend.pool.replicas[1].in_flight -= 1
    assert (result.status, result.body, result.replica) == (200, OK_BODY, 1)
    assert (bad.hits(), good.hits()) == (1, 1)
    assert good.seen[0].body == BODY
    assert make.errors == [("m", "503")]
    assert backend.pool.replicas[0].consecutive_failures == 1
    assert _in_flight(backend) == [0, 0]


@pytest.mark.parametrize("status", [502, 504])
async def test_other_retryable_statuses(start_upstream, make, status: int) -> None:  # type: ignore[no-untyped-def]
    bad = await start_upstream({"POST /v1/chat/completions": counting_handler(status, "bad")})
    good = await start_upstream({"POST /v1/chat/completions": json_handler(200, OK_BODY)})
    backend = make([bad.url, good.url])
    backend.pool.replicas[1].in_flight = 1
    result = await backend.fetch(CHAT, BODY)
    backend.pool.replicas[1].in_flight -= 1
    assert result.status == 200
    assert make.errors == [("m", str(status))]


async def test_connect_error_then_success_on_the_other_replica(start_upstream, make, closed_url) -> None:  # type: ignore[no-untyped-def]
    good = await start_upstream({"POST /v1/chat/completions": json_handler(200, OK_BODY)})
    backend = make([closed_url, good.url])
    backend.pool.replicas[1].in_flight = 1
    result = await backend.fetch(CHAT, BODY)
    backend.pool.replicas[1].in_flight -= 1
    assert (result.status, result.body, result.replica) == (200, OK_BODY, 1)
    assert make.errors == [("m", "connect_error")]
    assert backend.pool.replicas[0].consecutive_failures == 1
    assert _in_flight(backend) == [0, 0]


async def test_all_replicas_503_returns_the_last_answer(start_upstream, make) -> None:  # type: ignore[no-untyped-def]
    a = await start_upstream({"POST /v1/chat/completions": counting_handler(503, "a")})
    b = await start_upstream({"POST /v1/chat/completions": counting_handler(503, "b")})
    backend = make([a.url, b.url], retries=2, eject_after=10)
    result = await backend.fetch(CHAT, BODY)
    assert result.status == 503
    assert a.hits() + b.hits() == 3
    assert a.hits() >= 1 and b.hits() >= 1  # both replicas were tried
    # the third attempt went back to a replica already tried once: its answer is the one returned
    last = "a #2" if a.hits() == 2 else "b #2"
    assert result.body == b'{"error": {"message": "%s"}}' % last.encode()
    assert make.errors == [("m", "503")] * 3
    assert _in_flight(backend) == [0, 0]


async def test_single_replica_is_retried_after_a_backoff(start_upstream, make) -> None:  # type: ignore[no-untyped-def]
    a = await start_upstream({"POST /v1/chat/completions": counting_handler(503, "a")})
    backend = make([a.url], retries=1, eject_after=10)
    result = await backend.fetch(CHAT, BODY)
    assert a.hits() == 2
    assert result.body == b'{"error": {"message": "a #2"}}'


async def test_retries_zero_means_one_attempt(start_upstream, make) -> None:  # type: ignore[no-untyped-def]
    a = await start_upstream({"POST /v1/chat/completions": counting_handler(503, "a")})
    b = await start_upstream({"POST /v1/chat/completions": counting_handler(503, "b")})
    backend = make([a.url, b.url], retries=0)
    result = await backend.fetch(CHAT, BODY)
    assert result.status == 503
    assert a.hits() + b.hits() == 1


async def test_all_replicas_unreachable_raises(make, closed_url) -> None:  # type: ignore[no-untyped-def]
    backend = make([closed_url, closed_url + "/"], retries=2, eject_after=10)
    with pytest.raises(UpstreamUnavailable) as info:
        await backend.fetch(CHAT, BODY)
    exc = info.value
    assert exc.status == 502
    assert exc.code == "upstream_unavailable"
    assert exc.message.startswith("Backend 'm' is unreachable")
    assert make.errors == [("m", "connect_error")] * 3
    assert _in_flight(backend) == [0, 0]


async def test_connect_error_after_a_503_returns_the_503(start_upstream, make, closed_url) -> None:  # type: ignore[no-untyped-def]
    a = await start_upstream({"POST /v1/chat/completions": counting_handler(503, "a")})
    backend = make([a.url, closed_url], retries=1)
    backend.pool.replicas[1].in_flight = 1
    result = await backend.fetch(CHAT, BODY)
    backend.pool.replicas[1].in_flight -= 1
    assert result.status == 503
    assert make.errors == [("m", "503"), ("m", "connect_error")]


async def test_read_timeout_is_not_retried(start_upstream, make) -> None:  # type: ignore[no-untyped-def]
    a = await start_upstream({"POST /v1/chat/completions": slow_handler})
    b = await start_upstream({"POST /v1/chat/completions": slow_handler})
    backend = make([a.url, b.url], timeout_s=0.15, retries=2)
    with pytest.raises(UpstreamTimeout) as info:
        await backend.fetch(CHAT, BODY)
    assert info.value.status == 504
    assert info.value.message == "Backend 'm' did not answer within 0.15s."
    assert a.hits() + b.hits() == 1
    assert make.errors == [("m", "timeout")]
    assert _in_flight(backend) == [0, 0]


async def test_cancelled_fetch_releases_in_flight(start_upstream, make) -> None:  # type: ignore[no-untyped-def]
    a = await start_upstream({"POST /v1/chat/completions": slow_handler})
    backend = make([a.url])
    task = asyncio.create_task(backend.fetch(CHAT, BODY))
    for _ in range(200):
        await asyncio.sleep(0.005)
        if a.hits():
            break
    assert _in_flight(backend) == [1]
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert _in_flight(backend) == [0]


# ---------------------------------------------------------------- streams


async def test_open_stream_returns_a_stream_for_200(start_upstream, make) -> None:  # type: ignore[no-untyped-def]
    up = await start_upstream({"POST /v1/chat/completions": sse_handler})
    backend = make([up.url])
    stream = await backend.open_stream(CHAT, BODY)
    assert isinstance(stream, UpstreamStream)
    assert stream.status == 200
    assert stream.replica is backend.pool.replicas[0]
    assert _in_flight(backend) == [1]
    got = b"".join([c async for c in stream.chunks()])
    assert got == b"".join(SSE)
    assert stream.waited_s >= 0.0
    stream.close()
    assert _in_flight(backend) == [0]
    stream.close()  # idempotent: the count is released once
    assert _in_flight(backend) == [0]
    assert up.seen[0].body == BODY


async def test_open_stream_returns_a_result_for_4xx(start_upstream, make) -> None:  # type: ignore[no-untyped-def]
    err = b'{"error":{"message":"bad","type":"invalid_request_error","param":null,"code":null}}'
    up = await start_upstream({"POST /v1/chat/completions": json_handler(400, err)})
    backend = make([up.url])
    opened = await backend.open_stream(CHAT, BODY)
    assert isinstance(opened, UpstreamResult)
    assert (opened.status, opened.body, opened.replica) == (400, err, 0)
    assert _in_flight(backend) == [0]


async def test_open_stream_retries_503_then_streams(start_upstream, make) -> None:  # type: ignore[no-untyped-def]
    bad = await start_upstream({"POST /v1/chat/completions": counting_handler(503, "bad")})
    good = await start_upstream({"POST /v1/chat/completions": sse_handler})
    backend = make([bad.url, good.url])
    backend.pool.replicas[1].in_flight = 1
    stream = await backend.open_stream(CHAT, BODY)
    backend.pool.replicas[1].in_flight -= 1
    assert isinstance(stream, UpstreamStream)
    assert stream.replica.index == 1
    assert b"".join([c async for c in stream.chunks()]) == b"".join(SSE)
    stream.close()
    assert make.errors == [("m", "503")]
    assert _in_flight(backend) == [0, 0]


async def test_open_stream_all_503_returns_result(start_upstream, make) -> None:  # type: ignore[no-untyped-def]
    bad = await start_upstream({"POST /v1/chat/completions": counting_handler(503, "bad")})
    backend = make([bad.url], retries=1)
    opened = await backend.open_stream(CHAT, BODY)
    assert isinstance(opened, UpstreamResult)
    assert opened.status == 503
    assert bad.hits() == 2


async def test_stream_cut_mid_body_raises_upstream_broken(start_upstream, make) -> None:  # type: ignore[no-untyped-def]
    up = await start_upstream({"POST /v1/chat/completions": aborting_sse_handler})
    backend = make([up.url])
    stream = await backend.open_stream(CHAT, BODY)
    assert isinstance(stream, UpstreamStream)
    got: list[bytes] = []
    with pytest.raises(UpstreamBroken) as info:
        async for chunk in stream.chunks():
            got.append(chunk)
    assert b"".join(got) == SSE[0]
    assert info.value.code == "upstream_stream_broken"
    assert info.value.message == "Backend 'm' broke off the response mid-stream."
    assert make.errors == [("m", "stream_broken")]
    stream.close()
    assert _in_flight(backend) == [0]


async def test_stream_stall_raises_upstream_timeout(start_upstream, make) -> None:  # type: ignore[no-untyped-def]
    up = await start_upstream({"POST /v1/chat/completions": stalling_sse_handler})
    backend = make([up.url], timeout_s=0.15)
    stream = await backend.open_stream(CHAT, BODY)
    assert isinstance(stream, UpstreamStream)
    got: list[bytes] = []
    with pytest.raises(UpstreamTimeout, match=r"sent nothing for 0\.15s"):
        async for chunk in stream.chunks():
            got.append(chunk)
    assert got == [SSE[0]]
    assert make.errors == [("m", "timeout")]
    stream.close()
    assert _in_flight(backend) == [0]


async def test_stream_stall_counts_as_upstream_wait(start_upstream, make) -> None:  # type: ignore[no-untyped-def]
    up = await start_upstream({"POST /v1/chat/completions": stalling_sse_handler})
    backend = make([up.url], timeout_s=0.15)
    stream = await backend.open_stream(CHAT, BODY)
    assert isinstance(stream, UpstreamStream)
    try:
        with pytest.raises(UpstreamTimeout):
            async for _ in stream.chunks():
                pass
        assert stream.waited_s >= 0.1
    finally:
        stream.close()


async def test_closing_an_unfinished_stream_releases_the_replica(start_upstream, make) -> None:  # type: ignore[no-untyped-def]
    up = await start_upstream({"POST /v1/chat/completions": stalling_sse_handler})
    backend = make([up.url])
    stream = await backend.open_stream(CHAT, BODY)
    assert isinstance(stream, UpstreamStream)
    chunks = stream.chunks()
    assert await chunks.__anext__() == SSE[0]
    await chunks.aclose()
    stream.close()
    assert _in_flight(backend) == [0]


# ---------------------------------------------------------------- api key, probe, ejection


async def test_api_key_from_env_is_sent(start_upstream, make, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("UPSTREAM_TEST_KEY", "s3cret-value")
    up = await start_upstream({"POST /v1/chat/completions": json_handler(200, OK_BODY)})
    backend = make([up.url], api_key_env="UPSTREAM_TEST_KEY")
    await backend.fetch(CHAT, BODY)
    assert up.seen[0].headers["Authorization"] == "Bearer s3cret-value"


async def test_api_key_env_unset_sends_no_key_and_warns(start_upstream, make, monkeypatch, caplog) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv("UPSTREAM_TEST_KEY", raising=False)
    up = await start_upstream({"POST /v1/chat/completions": json_handler(200, OK_BODY)})
    with caplog.at_level(logging.WARNING, logger="gateway.upstream.backend"):
        backend = make([up.url], api_key_env="UPSTREAM_TEST_KEY")
    assert "UPSTREAM_TEST_KEY" in caplog.text
    await backend.fetch(CHAT, BODY)
    assert "Authorization" not in up.seen[0].headers


async def test_probe(start_upstream, make, closed_url) -> None:  # type: ignore[no-untyped-def]
    ok = await start_upstream({"GET /v1/models": json_handler(200, b'{"data":[]}')})
    bad = await start_upstream({"GET /v1/models": json_handler(500, b"no")})
    backend = make([ok.url, bad.url, closed_url])
    assert [await backend.probe(r) for r in backend.pool.replicas] == [True, False, False]
    assert ok.seen[0].path == "/v1/models"


async def test_probe_sends_the_api_key(start_upstream, make, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("UPSTREAM_TEST_KEY", "k")
    ok = await start_upstream({"GET /v1/models": json_handler(200, b"{}")})
    backend = make([ok.url], api_key_env="UPSTREAM_TEST_KEY")
    assert await backend.probe(backend.pool.replicas[0]) is True
    assert ok.seen[0].headers["Authorization"] == "Bearer k"


async def test_failing_replica_is_ejected_and_probed_back(start_upstream, make) -> None:  # type: ignore[no-untyped-def]
    healthy = True

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"data": []}, status=200 if healthy else 500)

    bad = await start_upstream(
        {"POST /v1/chat/completions": counting_handler(503, "bad"), "GET /v1/models": models}
    )
    good = await start_upstream({"POST /v1/chat/completions": json_handler(200, OK_BODY)})
    backend = make([bad.url, good.url], eject_after=1, eject_s=0.02)
    backend.pool.replicas[1].in_flight = 1
    assert (await backend.fetch(CHAT, BODY)).status == 200
    backend.pool.replicas[1].in_flight -= 1
    r0 = backend.pool.replicas[0]
    assert not r0.healthy
    # while ejected, every request goes to the healthy replica
    for _ in range(4):
        assert (await backend.fetch(CHAT, BODY)).replica == 1
    assert bad.hits("/v1/chat/completions") == 1
    for _ in range(200):
        if r0.healthy:
            break
        await asyncio.sleep(0.01)
    assert r0.healthy
    assert bad.hits("/v1/models") >= 1
