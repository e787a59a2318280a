"""Streams that fail mid-way, clients that hang up (the upstream request is cancelled), and 200 concurrent
streams."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.e2e.support import Fake, Gateway, HangingUpstream, Procs, Stack, backend, gateway_config, sse_data, wait_for


def test_stream_cut_ends_with_error_frame_then_done(stack: Stack) -> None:
    body = {
        "model": "alpha", "messages": [{"role": "user", "content": "cut me"}], "stream": True,
        "fake": {"mode": "cut", "cut_after": 3},
    }
    with httpx.stream("POST", f"{stack.gw.v1}/chat/completions", json=body, timeout=30) as resp:
        assert resp.status_code == 200
        raw = b"".join(resp.iter_raw())
    assert b"Traceback" not in raw
    events = sse_data(raw)
    assert events[-1] == "[DONE]"
    assert events.count("[DONE]") == 1
    chunks = [json.loads(e) for e in events[:3]]
    assert [c["object"] for c in chunks] == ["chat.completion.chunk"] * 3
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[1]["choices"][0]["delta"]["content"] == "Hello "
    err = json.loads(events[3])
    assert set(err) == {"error"}
    assert set(err["error"]) >= {"message", "type", "param", "code"}
    assert err["error"]["code"] == "upstream_stream_broken"
    assert len(events) == 5


def test_stream_cut_surfaces_as_sdk_error(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="alpha", messages=[{"role": "user", "content": "cut me"}], stream=True,
        extra_body={"fake": {"mode": "cut", "cut_after": 4}},
    )
    received: list[str] = []
    t = time.monotonic()
    with pytest.raises(openai.APIError) as info:
        for chunk in stream:
            if chunk.choices:
                received.append(chunk.choices[0].delta.content or "")
    assert time.monotonic() - t < 10
    assert "".join(received) == "Hello from replica-a! "  # the 3 content events before the cut
    assert info.value.body is not None and info.value.body["code"] == "upstream_stream_broken"  # type: ignore[index]

    completions = client.completions.create(
        model="alpha", prompt="cut", stream=True, extra_body={"fake": {"mode": "cut", "cut_after": 2}}
    )
    with pytest.raises(openai.APIError):
        for _ in completions:
            pass


# --------------------------------------------------------------------------------------------- disconnects


class DisconnectSetup:
    def __init__(self, fake: Fake, sink: HangingUpstream, gw: Gateway) -> None:
        self.fake = fake
        self.sink = sink
        self.gw = gw


@pytest.fixture(scope="module")
def dis(module_procs: Procs) -> Iterator[DisconnectSetup]:
    fake = module_procs.fake("replica-d")
    sink = HangingUpstream()
    gw = module_procs.gateway(gateway_config(backend("dee", fake.v1), backend("sink", sink.v1)), tag="disconnect")
    try:
        yield DisconnectSetup(fake, sink, gw)
    finally:
        sink.stop()


def test_client_disconnect_mid_stream_aborts_upstream(dis: DisconnectSetup) -> None:
    dis.fake.reset()
    rid = f"e2e-{uuid.uuid4().hex}"
    body = {
        "model": "dee", "messages": [{"role": "user", "content": "long"}], "stream": True,
        "fake": {"token_delay_s": 0.2, "n_words": 100},
    }
    with httpx.Client(timeout=30) as http, http.stream(
        "POST", f"{dis.gw.v1}/chat/completions", json=body, headers={"X-Request-Id": rid}
    ) as resp:
        assert resp.status_code == 200
        got = b""
        for chunk in resp.iter_raw():
            got += chunk
            if got.count(b"\n\n") >= 2:
                break
    closed_at = time.monotonic()
    assert dis.fake.stats()["streams_started"] == 1
    wait_for(lambda: dis.fake.stats()["streams_aborted"] == 1, timeout=5, what="upstream stream aborted")
    assert time.monotonic() - closed_at < 2.5
    stats = dis.fake.stats()
    assert stats["streams_completed"] == 0
    line = dis.gw.wait_access_line(rid)
    assert "outcome=client_disconnected" in line


def test_client_timeout_during_upstream_delay_aborts_streamed_upstream(dis: DisconnectSetup) -> None:
    dis.fake.reset()
    body = {
        "model": "dee", "messages": [{"role": "user", "content": "slow"}], "stream": True,
        "fake": {"delay_s": 5},
    }
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{dis.gw.v1}/chat/completions", json=body, timeout=0.5)
    gave_up = time.monotonic()
    wait_for(lambda: dis.fake.stats()["streams_aborted"] == 1, timeout=5, what="upstream stream aborted")
    assert time.monotonic() - gave_up < 2.5


def test_client_timeout_on_plain_request_cancels_upstream(dis: DisconnectSetup) -> None:
    # The fake only counts aborted *streams*; a plain request's upstream connection is watched at TCP level.
    received, closed = dis.sink.received, dis.sink.closed
    rid = f"e2e-{uuid.uuid4().hex}"
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            f"{dis.gw.v1}/chat/completions", json={"model": "sink", "messages": [{"role": "user", "content": "x"}]},
            headers={"X-Request-Id": rid}, timeout=0.5,
        )
    gave_up = time.monotonic()
    assert dis.sink.received == received + 1
    wait_for(lambda: dis.sink.closed == closed + 1, timeout=5, what="gateway to hang up on the upstream")
    assert time.monotonic() - gave_up < 2.5
    line = dis.gw.wait_access_line(rid)
    assert '" 499 ' in line and "outcome=client_disconnected" in line

    # Same through the openai SDK and its own timeout, on the shared fake this time (delay before the answer).
    dis.fake.reset()
    with dis.gw.client(timeout=0.5) as client, pytest.raises(openai.APITimeoutError):
        client.chat.completions.create(
            model="dee", messages=[{"role": "user", "content": "x"}], extra_body={"fake": {"delay_s": 5}}
        )
    assert dis.fake.stats()["requests"] == 1


# --------------------------------------------------------------------------------------------- concurrency


async def test_200_concurrent_streams(stack: Stack) -> None:
    n_streams, n_words = 200, 20
    expected = " ".join(f"w{i}" for i in range(n_words))
    before = stack.b.stats()

    async def one(client: openai.AsyncOpenAI, i: int) -> tuple[str, str | None]:
        stream = await client.chat.completions.create(
            model="beta", messages=[{"role": "user", "content": f"s{i}"}], stream=True,
            extra_body={"fake": {"n_words": n_words, "token_delay_s": 0.005}},
        )
        text, finish = "", None
        async for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
                finish = chunk.choices[0].finish_reason or finish
        return text, finish

    async with stack.gw.aclient(timeout=60) as client:
        results = await asyncio.gather(*(one(client, i) for i in range(n_streams)), return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    assert not errors, errors[:3]
    assert all(r == (expected, "stop") for r in results), [r for r in results if r != (expected, "stop")][:3]
    after = stack.b.stats()
    assert after["streams_completed"] - before["streams_completed"] == n_streams
    assert after["streams_aborted"] == before["streams_aborted"]
