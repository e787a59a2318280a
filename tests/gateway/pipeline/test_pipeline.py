"""gateway/pipeline/pipeline.py through the gateway's routes and middleware: every arm, chat and completions,
whole and streamed, with deterministic fake helper engines and a fake backend (see ``support.py``)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, MutableMapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import pytest
from prometheus_client import REGISTRY

from gateway.config import ARMS
from models.engine import EngineError, EngineOverloaded, EngineTimeout
from tests.gateway.asgi import hang_up_after
from tests.gateway.pipeline.support import (
    CORRECTED,
    MODEL,
    REWRITTEN,
    TOOL_ARGUMENTS,
    AlignerEngine,
    RewriterEngine,
    Rig,
    make_rig,
    sse_json,
)

QUESTION = "how to bake bread"
ORIGINAL = f"Answer 0: {QUESTION}"  # the fake backend's answer to QUESTION
AFTER_REWRITE = f"Answer 0: {REWRITTEN}"  # ... and to the rewritten question
TRACE = {"X-Aligngate-Trace": "1"}
TRACE_KEYS = {"request_id", "arm", "rewritten_prompt", "original_content", "helper_ms", "rewriter_skipped",
              "aligner_skipped", "helper_tokens"}
TOOLS: list[Any] = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]


def arm(name: str, trace: bool = False) -> dict[str, str]:
    return {"X-Aligngate-Arm": name, **(TRACE if trace else {})}


def chat_body(content: str = QUESTION, **fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "system", "content": "Be brief."},
                                         {"role": "user", "content": content}], **fields}


def completion_body(prompt: Any = QUESTION, **fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "prompt": prompt, **fields}


@dataclass
class Conn:
    rig: Rig
    http: httpx.AsyncClient
    sdk: openai.AsyncOpenAI

    async def chat(self, headers: dict[str, str], **fields: Any) -> httpx.Response:
        return await self.http.post("/v1/chat/completions", json=chat_body(**fields), headers=headers)

    async def complete(self, headers: dict[str, str], **fields: Any) -> httpx.Response:
        return await self.http.post("/v1/completions", json=completion_body(**fields), headers=headers)

    def backend_bodies(self) -> list[dict[str, Any]]:
        return [body for _, body in self.rig.backend.requests]


@asynccontextmanager
async def connect(rig: Rig) -> AsyncIterator[Conn]:
    transport = httpx.ASGITransport(app=rig.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw", timeout=10) as http:
        sdk = openai.AsyncOpenAI(
            api_key="x", base_url="http://gw/v1", http_client=http, max_retries=0  # type: ignore[arg-type]
        )
        yield Conn(rig, http, sdk)


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def failures(helper: str, reason: str) -> float:
    return sample("aligngate_helper_failures_total", helper=helper, reason=reason)


def trace_of(r: httpx.Response) -> dict[str, Any]:
    trace: dict[str, Any] = r.json()["aligngate"]
    assert set(trace) == TRACE_KEYS, trace
    assert trace["request_id"] == r.headers["x-request-id"]
    return trace


def stream_trace(r: httpx.Response) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The events of a streamed response and the trace, which must be on the last event before [DONE]."""
    events, done = sse_json(r.content)
    assert done, r.text
    assert all("aligngate" not in e for e in events[:-1]), events
    trace: dict[str, Any] = events[-1]["aligngate"]
    assert set(trace) == TRACE_KEYS
    assert trace["request_id"] == r.headers["x-request-id"]
    return events, trace


def chat_text(events: list[dict[str, Any]], index: int = 0) -> str:
    return "".join(
        c["delta"].get("content") or "" for e in events for c in e.get("choices") or [] if c["index"] == index
    )


def completion_text(events: list[dict[str, Any]], index: int = 0) -> str:
    return "".join(c["text"] for e in events for c in e.get("choices") or [] if c["index"] == index)


# ---------------------------------------------------------------- control


async def test_control_is_relayed_untouched_and_calls_no_helper() -> None:
    rig = make_rig()
    async with connect(rig) as c:
        r = await c.chat(arm("control"))
        assert r.status_code == 200
        assert r.headers["x-aligngate-arm"] == "control"
        body = r.json()
        assert body["choices"][0]["message"]["content"] == ORIGINAL
        assert "aligngate" not in body
        r = await c.chat(arm("control"), stream=True)
        events, done = sse_json(r.content)
        assert done and chat_text(events) == ORIGINAL
        assert all("aligngate" not in e for e in events)
    assert rig.rewriter is not None and rig.aligner is not None
    assert rig.rewriter.calls == [] and rig.aligner.calls == []


async def test_control_with_the_trace_header() -> None:
    async with connect(make_rig()) as c:
        r = await c.chat(arm("control", trace=True))
        assert r.json()["choices"][0]["message"]["content"] == ORIGINAL
        assert trace_of(r) == {
            "request_id": r.headers["x-request-id"], "arm": "control", "rewritten_prompt": None,
            "original_content": None, "helper_ms": {"rewriter": None, "aligner": None},
            "helper_tokens": {"rewriter": None, "aligner": None},
            "rewriter_skipped": None, "aligner_skipped": None,
        }
        r = await c.chat(arm("control", trace=True), stream=True)
        events, trace = stream_trace(r)
        assert chat_text(events) == ORIGINAL
        assert trace["arm"] == "control" and events[-1]["choices"] == []


@pytest.mark.parametrize("value", ["0", "no", ""])
async def test_the_trace_needs_the_header_set_to_1(value: str) -> None:
    async with connect(make_rig()) as c:
        for name in ARMS:
            r = await c.chat({"X-Aligngate-Arm": name, "X-Aligngate-Trace": value})
            assert r.status_code == 200
            assert "aligngate" not in r.json()
            r = await c.chat({"X-Aligngate-Arm": name, "X-Aligngate-Trace": value}, stream=True)
            events, done = sse_json(r.content)
            assert done and all("aligngate" not in e for e in events), name


async def test_trace_header_true_is_accepted() -> None:
    async with connect(make_rig()) as c:
        r = await c.chat({"X-Aligngate-Arm": "align", "X-Aligngate-Trace": "true"})
        assert trace_of(r)["arm"] == "align"


# ---------------------------------------------------------------- rewrite


async def test_rewrite_chat_sends_the_rewritten_last_user_message_to_the_backend() -> None:
    rig = make_rig()
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hello there"},
        {"role": "assistant", "content": "Hi!"},
        {"role": "user", "content": QUESTION},
    ]
    async with connect(rig) as c:
        r = await c.http.post("/v1/chat/completions", json={"model": MODEL, "messages": messages, "top_k": 5},
                              headers=arm("rewrite", trace=True))
    assert r.status_code == 200, r.text
    assert r.headers["x-aligngate-arm"] == "rewrite"
    assert r.json()["choices"][0]["message"]["content"] == AFTER_REWRITE  # uncorrected
    [sent] = c.backend_bodies()
    assert sent["messages"] == [*messages[:3], {"role": "user", "content": REWRITTEN}]
    assert sent["top_k"] == 5  # unknown fields pass through
    assert rig.rewriter is not None and rig.aligner is not None
    [call] = rig.rewriter.calls
    assert call.prompt == (
        "[INST] You are an expert prompt engineer. Please help me improve this prompt to get a more helpful and "
        f"harmless response:\n{QUESTION} [/INST]"
    )
    assert rig.aligner.calls == []
    trace = trace_of(r)
    assert trace["arm"] == "rewrite"
    assert trace["rewritten_prompt"] == REWRITTEN
    assert trace["original_content"] is None
    assert trace["helper_ms"]["rewriter"] > 0 and trace["helper_ms"]["aligner"] is None
    assert trace["rewriter_skipped"] is None


async def test_rewrite_chat_streamed_is_the_backends_stream_with_the_trace_last() -> None:
    rig = make_rig()
    async with connect(rig) as c:
        r = await c.chat(arm("rewrite", trace=True), stream=True)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events, trace = stream_trace(r)
        assert chat_text(events) == AFTER_REWRITE
        assert trace["rewritten_prompt"] == REWRITTEN and trace["helper_ms"]["rewriter"] > 0
        [sent] = c.backend_bodies()
        assert sent["stream"] is True and sent["messages"][-1]["content"] == REWRITTEN
        # through the SDK, no trace
        stream = await c.sdk.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": QUESTION}], stream=True,
            extra_headers=arm("rewrite"),
        )
        text = "".join([chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices])
        assert text == AFTER_REWRITE


async def test_rewrite_completions() -> None:
    rig = make_rig()
    async with connect(rig) as c:
        r = await c.complete(arm("rewrite", trace=True))
        assert r.json()["choices"][0]["text"] == AFTER_REWRITE
        assert c.backend_bodies()[0]["prompt"] == REWRITTEN
        assert trace_of(r)["rewritten_prompt"] == REWRITTEN
        r = await c.complete(arm("rewrite", trace=True), stream=True)
        events, trace = stream_trace(r)
        assert completion_text(events) == AFTER_REWRITE
        assert trace["rewritten_prompt"] == REWRITTEN
    assert rig.rewriter is not None
    assert len(rig.rewriter.calls) == 1  # the second rewrite came from the cache


async def test_rewrite_of_a_prompt_list_is_skipped() -> None:
    rig = make_rig()
    async with connect(rig) as c:
        r = await c.complete(arm("rewrite", trace=True), prompt=["a b c", "d e f"])
    assert r.status_code == 200
    assert c.backend_bodies()[0]["prompt"] == ["a b c", "d e f"]
    assert trace_of(r)["rewriter_skipped"] == "unsupported_prompt"
    assert rig.rewriter is not None and rig.rewriter.calls == []


async def test_a_rewrite_that_fails_a_guard_sends_the_original() -> None:
    rig = make_rig(rewriter=RewriterEngine(text=" ".join(["very"] * 40)))
    async with connect(rig) as c:
        r = await c.chat(arm("rewrite", trace=True))
    assert c.backend_bodies()[0]["messages"][-1]["content"] == QUESTION
    trace = trace_of(r)
    assert (trace["rewritten_prompt"], trace["rewriter_skipped"]) == (None, "too_long_output")


@pytest.mark.parametrize(("exc", "reason"), [(EngineTimeout("slow"), "timeout"), (EngineError("down"), "error")])
async def test_rewriter_failure_with_skip_sends_the_original_and_counts_it(exc: Exception, reason: str) -> None:
    rig = make_rig(rewriter=RewriterEngine(error=exc))
    before = failures("rewriter", reason)
    async with connect(rig) as c:
        r = await c.chat(arm("rewrite+align", trace=True))
    assert r.status_code == 200
    assert c.backend_bodies()[0]["messages"][-1]["content"] == QUESTION
    assert r.json()["choices"][0]["message"]["content"] == CORRECTED + ORIGINAL  # the aligner still ran
    trace = trace_of(r)
    assert (trace["rewritten_prompt"], trace["rewriter_skipped"]) == (None, f"failed:{reason}")
    assert failures("rewriter", reason) - before == 1


@pytest.mark.parametrize("stream", [False, True])
async def test_rewriter_failure_with_fail_is_a_502_and_reaches_no_backend(stream: bool) -> None:
    rig = make_rig(rewriter=RewriterEngine(error=EngineOverloaded("queue full")), rewriter_on_error="fail")
    before = failures("rewriter", "overloaded")
    async with connect(rig) as c:
        r = await c.chat(arm("rewrite"), stream=stream)
    assert r.status_code == 502
    assert r.headers["content-type"].startswith("application/json")
    err = r.json()["error"]
    assert (err["type"], err["code"]) == ("upstream_error", "helper_failed")
    assert err["message"] == "The rewriter failed (overloaded)."  # "queue full" stays in the log
    assert c.backend_bodies() == []
    assert failures("rewriter", "overloaded") - before == 1


async def test_rewriter_timeout_follows_on_error() -> None:
    rig = make_rig(rewriter=RewriterEngine(delay_s=5), rewriter_timeout_s=0.05, rewriter_on_error="fail")
    async with connect(rig) as c:
        r = await c.chat(arm("rewrite"))
    assert r.status_code == 502 and "timeout" in r.json()["error"]["message"]


# ---------------------------------------------------------------- align, whole


async def test_align_chat_corrects_the_answer() -> None:
    rig = make_rig()
    async with connect(rig) as c:
        r = await c.chat(arm("align", trace=True), logprobs=True)
    assert r.status_code == 200, r.text
    assert r.headers["x-aligngate-arm"] == "align"
    body = r.json()
    choice = body["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": CORRECTED + ORIGINAL}
    assert choice["logprobs"] is None  # they described the uncorrected tokens
    assert choice["finish_reason"] == "stop"
    assert body["id"] == "chatcmpl-1"
    # usage counts the correction as delivered (the aligner engine's count), the backend's own count aside
    aligner_tokens = {"prompt_tokens": 1, "completion_tokens": 7}
    assert body["usage"] == {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12, "aligngate": {
        "backend_completion_tokens": 4, "rewriter": None, "aligner": aligner_tokens}}
    assert body["aligngate"]["helper_tokens"] == {"rewriter": None, "aligner": aligner_tokens}
    [sent] = c.backend_bodies()
    assert not sent.get("stream")
    assert sent["messages"][-1]["content"] == QUESTION
    assert rig.aligner is not None and rig.rewriter is not None
    [call] = rig.aligner.calls
    assert call.prompt == (
        f"BEGINNING OF CONVERSATION: USER: ##Question: {QUESTION}\n##Answer: {ORIGINAL}\n##Correction:  ASSISTANT:"
    )
    assert call.params.temperature == 0.0
    assert rig.rewriter.calls == []
    trace = trace_of(r)
    assert trace["arm"] == "align"
    assert trace["rewritten_prompt"] is None
    assert trace["original_content"] == ORIGINAL
    assert trace["helper_ms"]["aligner"] > 0 and trace["helper_ms"]["rewriter"] is None
    assert trace["aligner_skipped"] is None


async def test_align_completions_corrects_the_text() -> None:
    rig = make_rig()
    async with connect(rig) as c:
        r = await c.complete(arm("align", trace=True))
    assert r.json()["choices"][0]["text"] == CORRECTED + ORIGINAL
    assert trace_of(r)["original_content"] == ORIGINAL
    assert rig.aligner is not None and "##Question: how to bake bread\n" in str(rig.aligner.calls[0].prompt)


async def test_rewrite_align_asks_the_aligner_about_the_users_own_words() -> None:
    rig = make_rig()
    async with connect(rig) as c:
        r = await c.chat(arm("rewrite+align", trace=True))
        assert r.json()["choices"][0]["message"]["content"] == CORRECTED + AFTER_REWRITE
        assert c.backend_bodies()[0]["messages"][-1]["content"] == REWRITTEN
        assert rig.aligner is not None
        assert rig.aligner.calls[0].prompt == (
            f"BEGINNING OF CONVERSATION: USER: ##Question: {QUESTION}\n##Answer: {AFTER_REWRITE}\n"
            "##Correction:  ASSISTANT:"
        )
        trace = trace_of(r)
        assert trace["arm"] == "rewrite+align"
        assert trace["rewritten_prompt"] == REWRITTEN
        assert trace["original_content"] == AFTER_REWRITE
        assert trace["helper_ms"]["rewriter"] > 0 and trace["helper_ms"]["aligner"] > 0
        r = await c.complete(arm("rewrite+align", trace=True))
        assert r.json()["choices"][0]["text"] == CORRECTED + AFTER_REWRITE
        assert c.backend_bodies()[1]["prompt"] == REWRITTEN


async def test_n2_corrects_each_choice() -> None:
    rig = make_rig()
    async with connect(rig) as c:
        r = await c.chat(arm("align", trace=True), n=2)
        contents = [ch["message"]["content"] for ch in r.json()["choices"]]
        assert contents == [CORRECTED + ORIGINAL, f"{CORRECTED}Answer 1: {QUESTION}"]
        trace = trace_of(r)
        assert trace["original_content"] == [ORIGINAL, f"Answer 1: {QUESTION}"]
        assert trace["aligner_skipped"] == [None, None]
        r = await c.complete(arm("align"), n=2)
        assert [ch["text"] for ch in r.json()["choices"]] == [CORRECTED + ORIGINAL, f"{CORRECTED}Answer 1: {QUESTION}"]
    assert rig.aligner is not None and len(rig.aligner.calls) == 4


async def test_tool_call_answers_pass_through_uncorrected() -> None:
    rig = make_rig()
    async with connect(rig) as c:
        answer = await c.sdk.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "weather in Paris?"}], tools=TOOLS,
            tool_choice="required", extra_headers=arm("rewrite+align"),
        )
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    assert choice.message.tool_calls is not None
    call = choice.message.tool_calls[0]
    assert (call.id, call.function.name, call.function.arguments) == (  # type: ignore[union-attr]
        "call_0", "get_weather", TOOL_ARGUMENTS
    )
    assert rig.aligner is not None and rig.aligner.calls == []


async def test_n2_with_one_tool_call_choice_corrects_only_the_text_one() -> None:
    rig = make_rig()
    async with connect(rig) as c:
        r = await c.chat(arm("align", trace=True), n=2, tools=TOOLS, fake={"tool_choices": [1]})
    c0, c1 = r.json()["choices"]
    assert c0["message"]["content"] == CORRECTED + ORIGINAL
    assert c1["message"]["content"] is None
    assert c1["message"]["tool_calls"][0]["function"]["arguments"] == TOOL_ARGUMENTS
    assert c1["finish_reason"] == "tool_calls"
    trace = trace_of(r)
    assert trace["original_content"] == [ORIGINAL, None]
    assert trace["aligner_skipped"] == [None, "tool_calls"]
    assert rig.aligner is not None and len(rig.aligner.calls) == 1


@pytest.mark.parametrize("stream", [False, True])
async def test_a_backend_error_is_relayed_without_calling_the_aligner(stream: bool) -> None:
    rig = make_rig()
    async with connect(rig) as c:
        r = await c.chat(arm("align"), stream=stream, fake={"status": 503})
    assert r.status_code == 503
    assert r.json()["error"]["message"] == "backend exploded"
    assert rig.aligner is not None and rig.aligner.calls == []


@pytest.mark.parametrize(("exc", "reason"), [(EngineTimeout("slow"), "timeout"), (EngineError("down"), "error")])
async def test_aligner_failure_with_skip_serves_the_original_and_counts_it(exc: Exception, reason: str) -> None:
    rig = make_rig(aligner=AlignerEngine(error=exc))
    before = failures("aligner", reason)
    async with connect(rig) as c:
        r = await c.chat(arm("align", trace=True))
    assert r.status_code == 200
    assert r.json()["choices"][0]["message"]["content"] == ORIGINAL
    trace = trace_of(r)
    assert trace["aligner_skipped"] == f"failed:{reason}"
    assert trace["original_content"] == ORIGINAL
    assert failures("aligner", reason) - before == 1


async def test_aligner_failure_with_fail_is_a_502() -> None:
    rig = make_rig(aligner=AlignerEngine(error=EngineError("aligner host down")), aligner_on_error="fail")
    async with connect(rig) as c:
        r = await c.chat(arm("align"))
    assert r.status_code == 502
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["code"] == "helper_failed" and err["message"] == "The aligner failed (error)."
    assert "aligner host down" not in r.text  # the exception's text stays in the log
    assert "Traceback" not in r.text


async def test_an_empty_correction_keeps_the_answer() -> None:
    async with connect(make_rig(aligner=AlignerEngine(text=""))) as c:
        r = await c.chat(arm("align", trace=True))
    assert r.json()["choices"][0]["message"]["content"] == ORIGINAL
    assert trace_of(r)["aligner_skipped"] == "empty"


# ---------------------------------------------------------------- align, streamed


async def test_streamed_alignment_streams_the_correction_word_by_word() -> None:
    rig = make_rig()
    async with connect(rig) as c:
        r = await c.chat(arm("align", trace=True), stream=True)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["x-aligngate-arm"] == "align"
        events, trace = stream_trace(r)
        assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
        deltas = [e["choices"][0]["delta"]["content"] for e in events[1:] if e["choices"]
                  and e["choices"][0]["delta"].get("content")]
        assert len(deltas) == len((CORRECTED + ORIGINAL).split())  # one event per word, as the aligner made them
        assert "".join(deltas) == CORRECTED + ORIGINAL
        assert all(e["object"] == "chat.completion.chunk" and e["id"] == "chatcmpl-1" for e in events)
        assert [e["choices"][0]["finish_reason"] for e in events if e["choices"]][-1] == "stop"
        assert events[-1]["choices"] == []
        assert trace["original_content"] == ORIGINAL and trace["helper_ms"]["aligner"] > 0
        [sent] = c.backend_bodies()
        assert sent["stream"] is False and "stream_options" not in sent  # the answer was fetched whole
        assert rig.aligner is not None and [x.method for x in rig.aligner.calls] == ["stream_complete"]

        stream = await c.sdk.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": QUESTION}], stream=True,
            extra_headers=arm("rewrite+align"),
        )
        chunks = [chunk async for chunk in stream]
        text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
        assert text == CORRECTED + AFTER_REWRITE
        assert chunks[-1].choices[0].finish_reason == "stop"


async def test_streamed_alignment_of_completions() -> None:
    async with connect(make_rig()) as c:
        r = await c.complete(arm("rewrite+align", trace=True), stream=True)
        events, trace = stream_trace(r)
        assert completion_text(events) == CORRECTED + AFTER_REWRITE
        assert all(e["object"] == "text_completion" for e in events)
        assert trace["rewritten_prompt"] == REWRITTEN and trace["original_content"] == AFTER_REWRITE
        stream = await c.sdk.completions.create(model=MODEL, prompt=QUESTION, stream=True, extra_headers=arm("align"))
        text = "".join([chunk.choices[0].text async for chunk in stream if chunk.choices])
        assert text == CORRECTED + ORIGINAL


async def test_streamed_alignment_with_include_usage() -> None:
    async with connect(make_rig()) as c:
        r = await c.chat(arm("align", trace=True), stream=True, stream_options={"include_usage": True})
        events, trace = stream_trace(r)
        *body, last = events
        assert last["choices"] == []
        assert last["usage"]["aligngate"]["backend_completion_tokens"] == 4
        delivered = last["usage"]["aligngate"]["aligner"]["completion_tokens"]
        assert last["usage"]["completion_tokens"] == delivered and last["usage"]["total_tokens"] == 5 + delivered
        assert all("usage" in e and e["usage"] is None for e in body)
        assert chat_text(events) == CORRECTED + ORIGINAL
        assert trace["arm"] == "align"
        # without the trace: the usage chunk is still last, and the SDK reads it
        stream = await c.sdk.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": QUESTION}], stream=True,
            stream_options={"include_usage": True}, extra_headers=arm("align"),
        )
        chunks = [chunk async for chunk in stream]
        assert chunks[-1].choices == [] and chunks[-1].usage is not None
        assert chunks[-1].usage.total_tokens == 12  # the SDK parses usage.aligngate too
        assert all(ch.usage is None for ch in chunks[:-1])


async def test_streamed_n2_corrects_each_choice() -> None:
    rig = make_rig()
    async with connect(rig) as c:
        r = await c.chat(arm("align", trace=True), stream=True, n=2)
        events, trace = stream_trace(r)
        assert chat_text(events, 0) == CORRECTED + ORIGINAL
        assert chat_text(events, 1) == f"{CORRECTED}Answer 1: {QUESTION}"
        finishes = {c["index"]: c["finish_reason"] for e in events for c in e["choices"] if c["finish_reason"]}
        assert finishes == {0: "stop", 1: "stop"}
        assert trace["original_content"] == [ORIGINAL, f"Answer 1: {QUESTION}"]
        assert trace["aligner_skipped"] == [None, None]
        r = await c.complete(arm("align"), stream=True, n=2)
        events, done = sse_json(r.content)
        assert done and completion_text(events, 1) == f"{CORRECTED}Answer 1: {QUESTION}"
    assert rig.aligner is not None and len(rig.aligner.calls) == 4


async def test_streamed_tool_calls_reach_the_client_uncorrected() -> None:
    rig = make_rig()
    async with connect(rig) as c:
        stream = await c.sdk.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "weather in Paris?"}], tools=TOOLS,
            tool_choice="required", stream=True, extra_headers=arm("align"),
        )
        chunks = [chunk async for chunk in stream]
    calls = [tc for ch in chunks if ch.choices for tc in ch.choices[0].delta.tool_calls or []]
    assert len(calls) == 1
    call = calls[0]
    assert call.index == 0 and call.id == "call_0" and call.type == "function"
    assert call.function is not None
    assert (call.function.name, call.function.arguments) == ("get_weather", TOOL_ARGUMENTS)
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    assert rig.aligner is not None and rig.aligner.calls == []


async def test_streamed_n2_with_one_tool_call_choice() -> None:
    rig = make_rig()
    async with connect(rig) as c:
        r = await c.chat(arm("align", trace=True), stream=True, n=2, tools=TOOLS, fake={"tool_choices": [0]})
        events, trace = stream_trace(r)
    tool_events = [ch for e in events for ch in e["choices"] if ch["delta"].get("tool_calls")]
    assert len(tool_events) == 1 and tool_events[0]["index"] == 0
    assert tool_events[0]["delta"]["tool_calls"][0]["function"]["arguments"] == TOOL_ARGUMENTS
    assert chat_text(events, 1) == f"{CORRECTED}Answer 1: {QUESTION}"
    assert trace["original_content"] == [None, f"Answer 1: {QUESTION}"]
    assert trace["aligner_skipped"] == ["tool_calls", None]
    assert rig.aligner is not None and len(rig.aligner.calls) == 1


@pytest.mark.parametrize(("exc", "reason"), [(EngineOverloaded("full"), "overloaded"), (EngineError("x"), "error")])
async def test_streamed_aligner_failure_before_the_first_delta_with_skip_streams_the_original(
    exc: Exception, reason: str
) -> None:
    rig = make_rig(aligner=AlignerEngine(error=exc))
    before = failures("aligner", reason)
    async with connect(rig) as c:
        r = await c.chat(arm("align", trace=True), stream=True)
        assert r.status_code == 200
        events, trace = stream_trace(r)
        assert chat_text(events) == ORIGINAL
        assert trace["aligner_skipped"] == f"failed:{reason}"
        stream = await c.sdk.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": QUESTION}], stream=True, extra_headers=arm("align"),
        )
        assert "".join([ch.choices[0].delta.content or "" async for ch in stream if ch.choices]) == ORIGINAL
    assert failures("aligner", reason) - before == 2


async def test_streamed_aligner_failure_before_the_first_delta_with_fail_is_a_502_json() -> None:
    rig = make_rig(aligner=AlignerEngine(error=EngineTimeout("no answer")), aligner_on_error="fail")
    before = failures("aligner", "timeout")
    async with connect(rig) as c:
        r = await c.chat(arm("align"), stream=True)
        assert r.status_code == 502
        assert r.headers["content-type"].startswith("application/json")
        err = r.json()["error"]
        assert err["code"] == "helper_failed" and "aligner" in err["message"]
        with pytest.raises(openai.APIStatusError) as info:
            await c.sdk.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": QUESTION}], stream=True,
                extra_headers=arm("align"),
            )
        assert info.value.status_code == 502
    assert failures("aligner", "timeout") - before == 2
    assert rig.aligner is not None and rig.aligner.streams_closed == 2


@pytest.mark.parametrize("on_error", ["skip", "fail"])
async def test_streamed_aligner_failure_mid_stream_ends_with_an_error_frame(on_error: str) -> None:
    rig = make_rig(aligner=AlignerEngine(error=EngineError("aligner died"), error_after_first=True),
                   aligner_on_error=on_error)  # type: ignore[arg-type]
    before = failures("aligner", "error")
    async with connect(rig) as c:
        r = await c.chat(arm("align", trace=True), stream=True)
    assert r.status_code == 200
    events, done = sse_json(r.content)
    assert done
    assert chat_text(events[:-1]) == "CORRECTED:"  # what went out before the failure
    err = events[-1]["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["code"] == "helper_failed" and "aligner" in err["message"] and "aligner died" not in err["message"]
    assert failures("aligner", "error") - before == 1
    assert rig.aligner is not None and rig.aligner.streams_closed == 1


# ---------------------------------------------------------------- timing


async def test_helper_time_is_not_gateway_overhead() -> None:
    rig = make_rig(rewriter=RewriterEngine(delay_s=0.3), aligner=AlignerEngine(delay_s=0.3))
    async with connect(rig) as c:
        r = await c.chat(arm("rewrite+align", trace=True))
    assert r.status_code == 200
    assert float(r.headers["x-aligngate-overhead-ms"]) < 100
    trace = trace_of(r)
    assert trace["helper_ms"]["rewriter"] >= 300 and trace["helper_ms"]["aligner"] >= 300


async def test_streamed_helper_time_is_not_gateway_overhead() -> None:
    rig = make_rig(aligner=AlignerEngine(delay_s=0.3, token_delay_s=0.05))
    labels = {"model": MODEL, "arm": "align"}
    before_sum = sample("aligngate_overhead_seconds_sum", **labels)
    before_count = sample("aligngate_overhead_seconds_count", **labels)
    async with connect(rig) as c:
        r = await c.chat(arm("align", trace=True), stream=True)
        _, trace = stream_trace(r)
        assert float(r.headers["x-aligngate-overhead-ms"]) < 100
        assert trace["helper_ms"]["aligner"] >= 300 + 50 * 4
    assert sample("aligngate_overhead_seconds_count", **labels) - before_count == 1
    assert sample("aligngate_overhead_seconds_sum", **labels) - before_sum < 0.1


def overhead(arm: str) -> tuple[float, float]:
    labels = {"model": MODEL, "arm": arm}
    return sample("aligngate_overhead_seconds_sum", **labels), sample("aligngate_overhead_seconds_count", **labels)


@pytest.mark.parametrize("helper", ["rewriter", "aligner"])
@pytest.mark.parametrize("stream", [False, True])
async def test_a_failing_helpers_time_is_not_gateway_overhead(helper: str, stream: bool) -> None:
    """on_error=fail: the 502 after a slow helper failure does not count the helper's time as overhead."""
    slow_failure = {"delay_s": 0.3, "error": EngineTimeout("too slow")}
    if helper == "rewriter":
        rig = make_rig(rewriter=RewriterEngine(**slow_failure), rewriter_on_error="fail")  # type: ignore[arg-type]
    else:
        rig = make_rig(aligner=AlignerEngine(**slow_failure), aligner_on_error="fail")  # type: ignore[arg-type]
    sum_before, count_before = overhead("rewrite+align")
    async with connect(rig) as c:
        r = await c.chat(arm("rewrite+align"), stream=stream)
    assert r.status_code == 502
    assert float(r.headers["x-aligngate-overhead-ms"]) < 100
    sum_after, count_after = overhead("rewrite+align")
    assert count_after - count_before == 1
    assert sum_after - sum_before < 0.1


async def test_a_correction_failing_mid_stream_is_not_gateway_overhead() -> None:
    rig = make_rig(aligner=AlignerEngine(error=EngineError("died"), error_after_first=True, error_after=3,
                                         token_delay_s=0.15))
    sum_before, count_before = overhead("align")
    async with connect(rig) as c:
        r = await c.chat(arm("align"), stream=True)
    events, done = sse_json(r.content)
    assert done and events[-1]["error"]["code"] == "helper_failed"
    assert chat_text(events[:-1]) == "CORRECTED: Answer 0:"
    sum_after, count_after = overhead("align")
    assert count_after - count_before == 1
    assert sum_after - sum_before < 0.1


async def test_n2_with_fail_cancels_the_other_corrections() -> None:
    """One correction failing with on_error=fail answers 502 and stops the corrections still running."""
    aligner = AlignerEngine(error=EngineError("bad"), error_if="Answer 0", block=True, block_if="Answer 1")
    rig = make_rig(aligner=aligner, aligner_on_error="fail")
    async with connect(rig) as c:
        r = await c.chat(arm("align"), n=2)
    assert r.status_code == 502
    assert len(aligner.calls) == 2
    await wait_until(lambda: aligner.cancelled == 1)


async def test_helper_durations_are_observed() -> None:
    before = {h: sample("aligngate_helper_duration_seconds_count", helper=h) for h in ("rewriter", "aligner")}
    async with connect(make_rig()) as c:
        await c.chat(arm("rewrite+align"), content="how to make soup")
        await c.chat(arm("align"), stream=True)
    after = {h: sample("aligngate_helper_duration_seconds_count", helper=h) for h in ("rewriter", "aligner")}
    assert after["rewriter"] - before["rewriter"] == 1
    assert after["aligner"] - before["aligner"] == 2


# ---------------------------------------------------------------- client disconnect


def http_scope(path: str, headers: dict[str, str], spec_version: str = "2.3") -> dict[str, Any]:
    """An HTTP scope as uvicorn makes it (spec 2.3: a streamed response listens for the disconnect)."""
    raw = [(k.lower().encode(), v.encode()) for k, v in {"content-type": "application/json", **headers}.items()]
    return {
        "type": "http", "asgi": {"version": "3.0", "spec_version": spec_version}, "http_version": "1.1",
        "method": "POST", "scheme": "http", "path": path, "raw_path": path.encode(), "root_path": "",
        "query_string": b"", "headers": raw, "client": ("127.0.0.1", 5555), "server": ("gw", 80),
    }


async def disconnect_while(rig: Rig, entered: asyncio.Event, headers: dict[str, str], body: dict[str, Any]
                           ) -> list[MutableMapping[str, Any]]:
    """Send ``body``, then hang up once ``entered`` is set; returns what the app sent."""
    raw = json.dumps(body).encode()
    receive = hang_up_after(raw, entered)

    sent: list[MutableMapping[str, Any]] = []

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    await asyncio.wait_for(rig.app(http_scope("/v1/chat/completions", headers), receive, send), 5)
    return sent


def assert_gone(sent: list[MutableMapping[str, Any]]) -> None:
    """Nothing but the empty 499 (which the server drops: the client is gone) was sent."""
    assert [m.get("status") for m in sent if m["type"] == "http.response.start"] == [499], sent
    assert all(not m.get("body") for m in sent), sent


async def wait_until(predicate: Any) -> None:
    """Poll ``predicate`` for up to 2 s (a cancelled task ends on a later turn of the loop)."""
    async with asyncio.timeout(2):
        while not predicate():  # noqa: ASYNC110 - the fakes count, they do not signal
            await asyncio.sleep(0.01)


async def test_client_disconnect_during_the_rewrite_cancels_it() -> None:
    rig = make_rig(rewriter=RewriterEngine(block=True))
    assert rig.rewriter is not None
    before = sample("aligngate_requests_total", model=MODEL, arm="rewrite", status="499")
    sent = await disconnect_while(rig, rig.rewriter.entered, arm("rewrite"), chat_body())
    await wait_until(lambda: rig.rewriter is not None and rig.rewriter.cancelled == 1)
    assert_gone(sent)
    assert rig.backend.requests == []
    assert sample("aligngate_requests_total", model=MODEL, arm="rewrite", status="499") - before == 1


@pytest.mark.parametrize("stream", [False, True])
async def test_client_disconnect_during_the_correction_cancels_it(stream: bool) -> None:
    rig = make_rig(aligner=AlignerEngine(block=True))
    assert rig.aligner is not None
    sent = await disconnect_while(rig, rig.aligner.entered, arm("align"), chat_body(stream=stream))
    await wait_until(lambda: rig.aligner is not None and rig.aligner.cancelled == 1)
    assert_gone(sent)
    assert len(rig.backend.requests) == 1
    if stream:
        assert rig.aligner.streams_closed == 1


async def test_client_disconnect_mid_correction_stops_the_aligner(caplog: pytest.LogCaptureFixture) -> None:
    """The client goes away while the correction streams: the next write fails and the aligner's stream ends."""
    aligner = AlignerEngine(token_delay_s=0.05)
    rig = make_rig(aligner=aligner)
    raw = json.dumps(chat_body(stream=True)).encode()
    gone = asyncio.Event()
    receive = hang_up_after(raw, gone)

    bodies: list[bytes] = []

    async def send(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.body" and message.get("body"):
            bodies.append(message["body"])
            if len(bodies) == 2:  # the role chunk and the first word went out; then the peer goes away
                gone.set()

    with caplog.at_level(logging.ERROR):
        await asyncio.wait_for(rig.app(http_scope("/v1/chat/completions", arm("align")), receive, send), 5)
    await wait_until(lambda: aligner.streams_closed == 1)
    assert len(bodies) <= 3  # stopped at once, not after the whole correction
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
