"""``RemoteEngine`` against the fake OpenAI-compatible upstream (a subprocess) and small in-test servers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from models.engine import ChatTurn, Delta, Engine, EngineError, EngineOverloaded, EngineTimeout, SamplingParams
from models.remote import RemoteEngine
from models.templates import get_template
from tests.models.conftest import API_KEY, StartServer
from tests.models.support import FakeUpstream

PARAMS = SamplingParams(max_tokens=64, temperature=0.0)


@asynccontextmanager
async def engine_for(url: str, **kwargs: Any) -> AsyncIterator[RemoteEngine]:
    engine = RemoteEngine(url, "helper-model", **kwargs)
    await engine.start()
    try:
        yield engine
    finally:
        await engine.close()


@pytest.fixture
async def engine(fake: FakeUpstream) -> AsyncIterator[RemoteEngine]:
    async with engine_for(fake.v1) as e:
        yield e


async def collect(stream: AsyncIterator[Delta]) -> list[Delta]:
    return [d async for d in stream]


def last_body(fake: FakeUpstream) -> dict[str, Any]:
    body: dict[str, Any] = fake.requests()[-1]["body"]
    return body


# ---------------------------------------------------------------------------------------------- happy path


async def test_is_an_engine(engine: RemoteEngine) -> None:
    assert isinstance(engine, Engine)
    assert engine.name == "helper-model"


async def test_complete(engine: RemoteEngine, fake: FakeUpstream) -> None:
    [c] = await engine.complete("three word prompt", PARAMS)
    assert c.text == "Hello from helper! You said: three word prompt"
    assert c.finish_reason == "stop"
    assert c.index == 0
    assert c.prompt_tokens == 3
    assert c.completion_tokens == 8
    [req] = fake.requests()
    assert req["path"] == "/v1/completions"
    assert req["body"] == {
        "model": "helper-model", "prompt": "three word prompt", "max_tokens": 64, "temperature": 0.0,
        "top_p": 1.0, "n": 1,
    }


async def test_the_rendered_template_is_exactly_what_the_server_receives(
    engine: RemoteEngine, fake: FakeUpstream
) -> None:
    user_text = 'Fix {this} {prompt} "quoted"\nline two ✓'
    rendered = get_template("bpo").render({"prompt": user_text})
    assert isinstance(rendered, str)
    await engine.complete(rendered, PARAMS)
    [req] = fake.requests()
    expected = (
        "[INST] You are an expert prompt engineer. Please help me improve this prompt to get a more helpful and "
        'harmless response:\nFix {this} {prompt} "quoted"\nline two ✓ [/INST]'
    )
    assert req["body"]["prompt"] == expected
    assert orjson.loads(req["raw"])["prompt"] == expected


async def test_sampling_params_on_the_wire(engine: RemoteEngine, fake: FakeUpstream) -> None:
    params = SamplingParams(max_tokens=7, temperature=0.6, top_p=0.9, stop=("\n\n", "END"), seed=42, n=1)
    await engine.complete("hi", params)
    body = last_body(fake)
    assert body["stop"] == ["\n\n", "END"]
    assert (body["max_tokens"], body["temperature"], body["top_p"], body["seed"]) == (7, 0.6, 0.9, 42)


async def test_max_tokens_gives_length(fake: FakeUpstream) -> None:
    async with engine_for(fake.v1, extra_body={"fake": {"n_words": 10}}) as engine:
        [c] = await engine.complete("x", SamplingParams(max_tokens=4))
        assert c.text.strip() == "w0 w1 w2 w3"
        assert c.finish_reason == "length"
        [s] = [d async for d in engine.stream_complete("x", SamplingParams(max_tokens=4)) if d.finish_reason]
        assert s.finish_reason == "length"
        assert last_body(fake)["fake"] == {"n_words": 10}


async def test_n_choices(engine: RemoteEngine) -> None:
    choices = await engine.complete("a b", SamplingParams(n=3))
    assert [c.index for c in choices] == [0, 1, 2]
    assert all(c.text == "Hello from helper! You said: a b" for c in choices)
    assert all(c.prompt_tokens == 2 for c in choices)
    assert sum(c.completion_tokens for c in choices) == 3 * 7  # the usage total, shared out


async def test_chat(engine: RemoteEngine, fake: FakeUpstream) -> None:
    turns = [ChatTurn("system", "be brief"), ChatTurn("user", "first"), ChatTurn("assistant", "ok"),
             ChatTurn("user", "last {one}")]
    [c] = await engine.chat(turns, PARAMS)
    assert c.text == "Hello from helper! You said: last {one}"
    assert c.prompt_tokens == 6
    assert c.completion_tokens == 7
    req = fake.requests()[-1]
    assert req["path"] == "/v1/chat/completions"
    assert req["body"]["messages"] == [
        {"role": "system", "content": "be brief"}, {"role": "user", "content": "first"},
        {"role": "assistant", "content": "ok"}, {"role": "user", "content": "last {one}"},
    ]


async def test_stream_complete(engine: RemoteEngine, fake: FakeUpstream) -> None:
    deltas = await collect(engine.stream_complete("say it", PARAMS))
    assert "".join(d.text for d in deltas) == "Hello from helper! You said: say it"
    assert len(deltas) > 3
    assert all(d.finish_reason is None for d in deltas[:-1])
    last = deltas[-1]
    assert (last.finish_reason, last.prompt_tokens, last.completion_tokens) == ("stop", 2, 7)
    assert last.extra["usage"] == {"prompt_tokens": 2, "completion_tokens": 7, "total_tokens": 9}
    body = last_body(fake)
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}


async def test_stream_chat(engine: RemoteEngine) -> None:
    deltas = await collect(engine.stream_chat([ChatTurn("user", "hey there")], PARAMS))
    assert "".join(d.text for d in deltas) == "Hello from helper! You said: hey there"
    assert all(d.text for d in deltas[:-1])  # the role-only first chunk gives no empty delta
    assert (deltas[-1].finish_reason, deltas[-1].prompt_tokens, deltas[-1].completion_tokens) == ("stop", 2, 7)


async def test_stream_n_choices(engine: RemoteEngine) -> None:
    deltas = await collect(engine.stream_chat([ChatTurn("user", "q")], SamplingParams(n=2)))
    for index in (0, 1):
        mine = [d for d in deltas if d.index == index]
        assert "".join(d.text for d in mine) == "Hello from helper! You said: q"
        assert mine[-1].finish_reason == "stop"
        assert mine[-1].prompt_tokens == 1
    assert deltas[-1].extra["usage"] == {"prompt_tokens": 1, "completion_tokens": 12, "total_tokens": 13}


async def test_shared_session_is_used_and_left_open(fake: FakeUpstream) -> None:
    async with aiohttp.ClientSession() as session:
        engine = RemoteEngine(fake.v1, "m", session=session)
        await engine.start()
        [c] = await engine.complete("x", PARAMS)
        assert c.text.endswith("x")
        await engine.close()
        assert not session.closed


async def test_works_without_start(fake: FakeUpstream) -> None:
    engine = RemoteEngine(fake.v1 + "/", "m")
    try:
        [c] = await engine.complete("x", PARAMS)
        assert c.text.endswith("x")
    finally:
        await engine.close()


# ---------------------------------------------------------------------------------------------- failures


async def test_read_timeout(fake: FakeUpstream) -> None:
    async with engine_for(fake.v1, timeout_s=0.2, extra_body={"fake": {"delay_s": 3}}) as engine:
        with pytest.raises(EngineTimeout, match=r"sent nothing for 0.2s"):
            await engine.complete("x", PARAMS)
        assert len(fake.requests()) == 1  # a timeout is not retried


async def test_stream_timeout_between_events(fake: FakeUpstream) -> None:
    async with engine_for(fake.v1, timeout_s=0.2, extra_body={"fake": {"mode": "hang", "delay_s": 3}}) as engine:
        with pytest.raises(EngineTimeout):
            await collect(engine.stream_chat([ChatTurn("user", "x")], PARAMS))


@pytest.mark.parametrize("status", [503, 502])
async def test_retryable_status_is_retried_once(fake: FakeUpstream, status: int) -> None:
    async with engine_for(fake.v1, extra_body={"fake": {"mode": "error", "status": status}}) as engine:
        expected = EngineOverloaded if status == 503 else EngineError
        with pytest.raises(expected, match=f"HTTP {status}: fake upstream error") as info:
            await engine.complete("x", PARAMS)
        assert (type(info.value) is EngineOverloaded) == (status == 503)
        assert len(fake.requests()) == 2


async def test_504_is_a_timeout(fake: FakeUpstream) -> None:
    async with engine_for(fake.v1, retries=0, extra_body={"fake": {"mode": "error", "status": 504}}) as engine:
        with pytest.raises(EngineTimeout):
            await engine.complete("x", PARAMS)
        assert len(fake.requests()) == 1


async def test_429_is_overloaded_without_retry(fake: FakeUpstream) -> None:
    async with engine_for(fake.v1, extra_body={"fake": {"mode": "error", "status": 429}}) as engine:
        with pytest.raises(EngineOverloaded, match="HTTP 429"):
            await engine.stream_complete("x", PARAMS).__anext__()
        assert len(fake.requests()) == 1


async def test_other_status_is_an_error_without_retry(fake: FakeUpstream) -> None:
    async with engine_for(fake.v1, extra_body={"fake": {"mode": "error_text", "status": 500}}) as engine:
        with pytest.raises(EngineError, match="HTTP 500: upstream exploded") as info:
            await engine.chat([ChatTurn("user", "x")], PARAMS)
        assert type(info.value) is EngineError
        assert len(fake.requests()) == 1


async def test_closed_port(closed_url: str) -> None:
    async with engine_for(closed_url, retries=2) as engine:
        with pytest.raises(EngineError, match="is unreachable") as info:
            await engine.complete("x", PARAMS)
        assert type(info.value) is EngineError


async def test_stream_cut_midway(fake: FakeUpstream) -> None:
    async with engine_for(fake.v1, extra_body={"fake": {"mode": "cut", "cut_after": 3}}) as engine:
        with pytest.raises(EngineError, match=r"broke off|ended before"):
            await collect(engine.stream_chat([ChatTurn("user", "x")], PARAMS))


async def test_abandoned_stream_drops_the_connection(fake: FakeUpstream) -> None:
    async with engine_for(fake.v1, extra_body={"fake": {"token_delay_s": 0.05}}) as engine:
        stream = engine.stream_complete("a b c d e f", PARAMS)
        first = await stream.__anext__()
        assert first.text
        await stream.aclose()  # type: ignore[attr-defined]
        for _ in range(100):
            if fake.stats()["streams_aborted"]:
                break
            await asyncio.sleep(0.02)
        assert fake.stats()["streams_aborted"] == 1


# ---------------------------------------------------------------------------------------------- API key


async def test_api_key_is_sent_as_bearer(fake: FakeUpstream) -> None:
    async with engine_for(fake.v1, api_key=API_KEY) as engine:
        await engine.complete("x", PARAMS)
        assert fake.requests()[-1]["headers"]["authorization"] == f"Bearer {API_KEY}"
        assert API_KEY not in repr(engine)


async def test_key_required_and_accepted(keyed_fake: FakeUpstream) -> None:
    async with engine_for(keyed_fake.v1, api_key=API_KEY) as engine:
        [c] = await engine.complete("x", PARAMS)
        assert c.text == "Hello from keyed! You said: x"


async def test_wrong_key_error_never_shows_a_key(keyed_fake: FakeUpstream) -> None:
    wrong = "sk-wrong-key-zzzzzzzz"
    async with engine_for(keyed_fake.v1, api_key=wrong) as engine:
        with pytest.raises(EngineError, match="HTTP 401") as info:
            await engine.complete("x", PARAMS)
        assert wrong not in str(info.value)
        assert API_KEY not in str(info.value)


async def echo_key(request: web.Request) -> web.Response:
    """An upstream that quotes the caller's key back in its error, as some APIs do."""
    key = request.headers.get("Authorization", "")
    return web.json_response({"error": {"message": f"Incorrect API key provided: {key}"}}, status=401)


async def echo_key_stream(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    key = request.headers.get("Authorization", "")
    await resp.write(b'data: {"choices":[{"index":0,"text":"hi","finish_reason":null}]}\n\n')
    await resp.write(b"data: " + orjson.dumps({"error": {"message": f"quota for {key}"}}) + b"\n\n")
    return resp


async def test_key_quoted_back_by_the_server_is_redacted(start_server: StartServer) -> None:
    url = await start_server({"POST /v1/completions": echo_key, "POST /v1/chat/completions": echo_key_stream})
    async with engine_for(url, api_key=API_KEY) as engine:
        with pytest.raises(EngineError) as info:
            await engine.complete("x", PARAMS)
        assert "Incorrect API key provided: Bearer ***" in str(info.value)
        assert API_KEY not in str(info.value)
        with pytest.raises(EngineError, match="failed mid-stream") as info:
            await collect(engine.stream_chat([ChatTurn("user", "x")], PARAMS))
        assert API_KEY not in str(info.value)


async def test_url_credentials_are_redacted(closed_url: str) -> None:
    url = closed_url.replace("http://", "http://admin:hunter2@")
    async with engine_for(url, retries=0) as engine:
        with pytest.raises(EngineError) as info:
            await engine.complete("x", PARAMS)
        assert "hunter2" not in str(info.value)
        assert "hunter2" not in repr(engine)


# ---------------------------------------------------------------------------------------------- malformed


def reply(body: bytes, content_type: str = "application/json", status: int = 200) -> Any:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=body, status=status, headers={"Content-Type": content_type})

    return handler


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"<html>oops</html>", "malformed JSON"),
        (b"[1, 2]", "not an object"),
        (b'{"object": "text_completion"}', "no 'choices'"),
        (b'{"choices": [{"index": 0, "finish_reason": "stop"}]}', "no 'text' text"),
    ],
)
async def test_malformed_answers(start_server: StartServer, body: bytes, message: str) -> None:
    url = await start_server({"POST /v1/completions": reply(body)})
    async with engine_for(url) as engine:
        with pytest.raises(EngineError, match=message):
            await engine.complete("x", PARAMS)


@pytest.mark.parametrize(
    ("events", "message"),
    [
        (b"data: {not json}\n\ndata: [DONE]\n\n", "malformed stream event"),
        (b'data: {"choices":[{"index":0,"text":"a","finish_reason":null}]}\n\n', "ended before it finished"),
        (b"", "ended before it finished"),
    ],
)
async def test_malformed_streams(start_server: StartServer, events: bytes, message: str) -> None:
    url = await start_server({"POST /v1/completions": reply(events, "text/event-stream")})
    async with engine_for(url) as engine:
        with pytest.raises(EngineError, match=message):
            await collect(engine.stream_complete("x", PARAMS))


async def test_sse_details(start_server: StartServer) -> None:
    """CRLF lines, comments, events split across TCP writes, multi-line data and a stream without [DONE]."""

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for part in (
            b": keep-alive\r\n\r\n",
            b'data: {"choices":[{"index":0,"delta":{"content":"he',
            b'llo"},"finish_reason":null}]}\r\n\r\n',
            b'data: {"choices":[{"index":0,\ndata: "delta":{"content":" w\\u00f6rld"},"finish_reason":"length"}]}\n\n',
        ):
            await resp.write(part)
            await asyncio.sleep(0.01)
        return resp

    url = await start_server({"POST /v1/chat/completions": handler})
    async with engine_for(url) as engine:
        deltas = await collect(engine.stream_chat([ChatTurn("user", "x")], PARAMS))
        assert [(d.text, d.finish_reason) for d in deltas] == [("hello", None), (" wörld", "length")]
        assert deltas[-1].prompt_tokens is None


async def test_server_that_ignores_stream(start_server: StartServer) -> None:
    body = orjson.dumps({
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "whole"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    })
    url = await start_server({"POST /v1/chat/completions": reply(body)})
    async with engine_for(url) as engine:
        deltas = await collect(engine.stream_chat([ChatTurn("user", "x")], PARAMS))
        assert [(d.text, d.finish_reason, d.completion_tokens) for d in deltas] == [("whole", "stop", 1)]


def test_rejects_bad_urls() -> None:
    with pytest.raises(ValueError, match="http"):
        RemoteEngine("vllm:8000/v1", "m")


async def test_ping(fake: FakeUpstream, closed_url: str) -> None:
    async with engine_for(fake.v1) as engine:
        assert await engine.ping()
        assert fake.requests()[-1]["path"] == "/v1/models"
    async with engine_for(closed_url) as engine:
        assert not await engine.ping()


async def test_streams_reuse_the_connection(fake: FakeUpstream) -> None:
    async with aiohttp.ClientSession() as session:
        engine = RemoteEngine(fake.v1, "m", session=session)
        for _ in range(3):
            await collect(engine.stream_complete("x", PARAMS))
        assert len(fake.requests()) == 3
        assert session.connector is not None
        assert sum(len(v) for v in session.connector._conns.values()) == 1  # one idle keep-alive connection
