"""gateway/pipeline/sentences.py: streamed answers corrected sentence by sentence while the backend generates them
(``helpers.aligner.stream: sentence``, the ``stream`` template), through the gateway's routes and middleware with
the fake backend and aligner of ``support.py``."""

from __future__ import annotations

import asyncio
import json
from collections.abc import MutableMapping
from typing import Any

import pytest

from models.engine import EngineError, EngineTimeout
from tests.gateway.asgi import hang_up_after
from tests.gateway.pipeline.support import CORRECTED, MODEL, TOOL_ARGUMENTS, AlignerEngine, Rig, make_rig, sse_json
from tests.gateway.pipeline.test_pipeline import (
    QUESTION,
    arm,
    chat_text,
    completion_text,
    connect,
    failures,
    http_scope,
    overhead,
    sample,
    wait_until,
)

REPLY = "First sentence here. Second one, e.g. with 3.14 in it! Third?"
SENTENCES = ["First sentence here. ", "Second one, e.g. with 3.14 in it! ", "Third?"]
FIXED = [CORRECTED + s.strip() for s in SENTENCES]
SERVED = "CORRECTED: First sentence here. CORRECTED: Second one, e.g. with 3.14 in it! CORRECTED: Third?"
TRACE_KEYS = {"request_id", "arm", "rewritten_prompt", "original_content", "helper_ms", "rewriter_skipped",
              "aligner_skipped", "sentences", "helper_tokens"}


def rig_(aligner: AlignerEngine | None = None, **kwargs: Any) -> Rig:
    return make_rig(aligner=aligner, aligner_template="stream", aligner_stream="sentence", **kwargs)


def body(reply: str = REPLY, **fields: Any) -> dict[str, Any]:
    fake = {"reply": reply, **fields.pop("fake", {})}
    return {"model": MODEL, "messages": [{"role": "user", "content": QUESTION}], "stream": True, "fake": fake,
            **fields}


def prompt(prefix: str, last: str) -> str:
    return (f"<start_of_turn>user\n##Question: {QUESTION} | ##Answer_Prefix: {prefix} | ##Answer_Last_Sentence: "
            f"{last} | ##Your_Revision: <end_of_turn>\n<start_of_turn>model")


def sentences_total(outcome: str) -> float:
    return sample("aligngate_aligner_sentences_total", outcome=outcome)


async def stream(rig: Rig, data: dict[str, Any], *, trace: bool = True, path: str = "/v1/chat/completions",
                 arm_name: str = "align") -> tuple[list[dict[str, Any]], bool]:
    async with connect(rig) as c:
        r = await c.http.post(path, json=data, headers=arm(arm_name, trace=trace))
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/event-stream")
    return sse_json(r.content)


# ---------------------------------------------------------------- the corrected stream


async def test_each_sentence_is_corrected_with_the_corrected_prefix_and_sent_as_it_is_done() -> None:
    rig = rig_()
    events, done = await stream(rig, body())
    assert done
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    deltas = [e["choices"][0]["delta"].get("content") for e in events[1:] if e["choices"]]
    assert deltas == [f"{FIXED[0]} ", f"{FIXED[1]} ", FIXED[2], None]  # one event per sentence, then the finish
    assert chat_text(events) == SERVED
    assert [e["choices"][0]["finish_reason"] for e in events if e["choices"]][-1] == "stop"
    assert all(e["object"] == "chat.completion.chunk" and e["id"] == "chatcmpl-1" for e in events)
    assert rig.aligner is not None
    assert [(c.method, c.prompt) for c in rig.aligner.calls] == [
        ("complete", prompt("", "First sentence here.")),
        ("complete", prompt(FIXED[0], "Second one, e.g. with 3.14 in it!")),
        ("complete", prompt(f"{FIXED[0]} {FIXED[1]}", "Third?")),
    ]
    [(_, sent)] = rig.backend.requests
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}  # streamed, usage asked


async def test_the_trace_lists_every_sentence_on_the_last_chunk() -> None:
    events, _ = await stream(rig_(), body())
    assert all("aligngate" not in e for e in events[:-1])
    trace = events[-1]["aligngate"]
    assert events[-1]["choices"] == []
    assert set(trace) == TRACE_KEYS
    assert trace["original_content"] == REPLY and trace["aligner_skipped"] is None
    assert [(s["original"], s["corrected"], s["skipped"]) for s in trace["sentences"]] == [
        (SENTENCES[0], f"{FIXED[0]} ", None), (SENTENCES[1], f"{FIXED[1]} ", None), (SENTENCES[2], FIXED[2], None)
    ]
    assert all(s["ms"] is not None and s["ms"] >= 0 for s in trace["sentences"])
    assert trace["helper_ms"]["aligner"] >= 0


async def test_without_the_trace_header_there_is_no_trace_chunk() -> None:
    events, done = await stream(rig_(), body(), trace=False)
    assert done and all("aligngate" not in e for e in events) and events[-1]["choices"]


async def test_completions() -> None:
    rig = rig_()
    data = {"model": MODEL, "prompt": QUESTION, "stream": True, "fake": {"reply": REPLY}}
    events, done = await stream(rig, data, path="/v1/completions")
    assert done
    assert completion_text(events) == SERVED
    assert all(e["object"] == "text_completion" for e in events)
    assert [e["choices"][0]["finish_reason"] for e in events if e["choices"]][-1] == "stop"


@pytest.mark.parametrize("asked", [True, False])
async def test_include_usage_is_honoured(asked: bool) -> None:
    extra: dict[str, Any] = {"stream_options": {"include_usage": True}} if asked else {}
    events, _ = await stream(rig_(), body(REPLY, **extra), trace=False)
    if asked:
        assert events[-1]["choices"] == [] and events[-1]["usage"]["prompt_tokens"] == 5
        assert all("usage" in e and e["usage"] is None for e in events[:-1])
    else:
        assert all("usage" not in e for e in events)


async def test_n2_corrects_each_choice() -> None:
    rig = rig_()
    events, done = await stream(rig, body(n=2))
    assert done
    assert chat_text(events, 0) == SERVED and chat_text(events, 1) == SERVED
    trace = events[-1]["aligngate"]
    assert trace["original_content"] == [REPLY, REPLY] and trace["aligner_skipped"] == [None, None]
    assert [len(s) for s in trace["sentences"]] == [3, 3]
    for index in (0, 1):  # each choice opens with its role and ends with its finish
        mine = [e["choices"][0] for e in events if e["choices"] and e["choices"][0]["index"] == index]
        assert mine[0]["delta"]["role"] == "assistant" and mine[-1]["finish_reason"] == "stop"


async def test_tool_call_choices_pass_through_uncorrected() -> None:
    rig = rig_()
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    events, done = await stream(rig, body(n=2, tools=tools, fake={"tool_choices": [1]}))
    assert done
    assert chat_text(events, 0) == SERVED
    calls = [c["delta"]["tool_calls"][0] for e in events for c in e.get("choices") or []
             if c["index"] == 1 and c["delta"].get("tool_calls")]
    assert [c["function"].get("name") for c in calls] == ["get_weather", None]  # as the backend sent them
    assert "".join(c["function"]["arguments"] for c in calls) == TOOL_ARGUMENTS
    finishes = {c["index"]: c["finish_reason"] for e in events for c in e.get("choices") or [] if c["finish_reason"]}
    assert finishes == {0: "stop", 1: "tool_calls"}
    trace = events[-1]["aligngate"]
    assert trace["aligner_skipped"] == [None, "tool_calls"] and trace["sentences"][1] is None
    assert rig.aligner is not None and len(rig.aligner.calls) == 3  # the tool choice never reached the aligner


async def test_fenced_code_passes_through_uncorrected() -> None:
    reply = "Run this code.\n```python\nx = 1. Y = 2.\n```\nThen check it."
    rig = rig_()
    events, _ = await stream(rig, body(reply))
    assert chat_text(events) == "CORRECTED: Run this code.\n```python\nx = 1. Y = 2.\n```\nCORRECTED: Then check it."
    assert rig.aligner is not None and len(rig.aligner.calls) == 2
    assert [s["skipped"] for s in events[-1]["aligngate"]["sentences"]] == [None, "code", None]


# ---------------------------------------------------------------- pipelining


async def test_the_first_corrected_sentence_reaches_the_client_before_the_backend_has_finished() -> None:
    rig = rig_()
    data = json.dumps(body(fake={"token_delay_s": 0.05})).encode()
    loop = asyncio.get_running_loop()
    sent: list[tuple[float, bytes]] = []

    async def send(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.body" and message.get("body"):
            sent.append((loop.time(), message["body"]))

    await asyncio.wait_for(rig.app(http_scope("/v1/chat/completions", arm("align")), hang_up_after(data,
                                                                                                   asyncio.Event()),
                                   send), 10)
    [backend_stream] = rig.backend.streams
    assert backend_stream.ended_at is not None
    first_text = next(t for t, piece in sent if b'"content":"CORRECTED' in piece)
    assert first_text < backend_stream.ended_at - 0.2  # several backend tokens were still to come
    events, done = sse_json(b"".join(piece for _, piece in sent))
    assert done and chat_text(events) == SERVED


async def test_the_aligner_works_on_one_sentence_while_the_backend_writes_the_next() -> None:
    """Backend 0.05 s a word (13 words), aligner 0.3 s a sentence: overlapped ≈ 0.65 + 0.3 s, not 0.65 + 0.9."""
    rig = rig_(AlignerEngine(delay_s=0.3))
    start = asyncio.get_running_loop().time()
    events, done = await stream(rig, body(fake={"token_delay_s": 0.05}), trace=False)
    took = asyncio.get_running_loop().time() - start
    assert done and chat_text(events) == SERVED
    assert took < 0.65 + 0.9 - 0.2, took


# ---------------------------------------------------------------- guards and failures


async def test_a_bad_correction_keeps_the_sentence() -> None:
    before = sentences_total("kept")
    events, _ = await stream(rig_(AlignerEngine(text="")), body())
    assert chat_text(events) == REPLY
    trace = events[-1]["aligngate"]
    assert [s["skipped"] for s in trace["sentences"]] == ["empty", "empty", "empty"]
    assert trace["aligner_skipped"] == "empty"
    assert sentences_total("kept") - before == 3


async def test_a_truncated_sentence_correction_keeps_the_sentence() -> None:
    events, _ = await stream(rig_(AlignerEngine(finish_reason="length")), body())
    assert chat_text(events) == REPLY
    assert events[-1]["aligngate"]["aligner_skipped"] == "truncated"


@pytest.mark.parametrize(("exc", "reason"), [(EngineError("boom"), "error"), (EngineTimeout("slow"), "timeout")])
async def test_aligner_failure_with_skip_keeps_that_sentence_and_sends_the_rest_uncorrected(
    exc: Exception, reason: str
) -> None:
    aligner = AlignerEngine(error=exc, error_if="Second one")
    before = failures("aligner", reason), sentences_total("failed"), sentences_total("uncorrected")
    events, done = await stream(rig_(aligner), body())
    assert done
    assert chat_text(events) == f"{FIXED[0]} {SENTENCES[1]}{SENTENCES[2]}"
    trace = events[-1]["aligngate"]
    assert [s["skipped"] for s in trace["sentences"]] == [None, f"failed:{reason}", "after_failure"]
    assert trace["aligner_skipped"] is None  # the first sentence was corrected
    assert len(aligner.calls) == 2  # not asked again after the failure
    after = failures("aligner", reason), sentences_total("failed"), sentences_total("uncorrected")
    assert [a - b for a, b in zip(after, before, strict=True)] == [1, 1, 1]


async def test_aligner_failure_with_fail_ends_with_an_error_frame_after_what_was_corrected() -> None:
    aligner = AlignerEngine(error=EngineError("aligner died"), error_if="Second one")
    events, done = await stream(rig_(aligner, aligner_on_error="fail"), body())
    assert done
    assert chat_text(events[:-1]) == f"{FIXED[0]} "
    err = events[-1]["error"]
    assert err["code"] == "helper_failed" and err["message"] == "The aligner failed (error)."  # "aligner died": logged
    assert not [e for e in events if e.get("aligngate")]


async def test_the_backend_failing_mid_answer_ends_after_the_sentences_it_completed() -> None:
    """Cut after the role and 11 words ("Third?" included, without its finish): the third is not sent."""
    rig = rig_()
    events, done = await stream(rig, body(fake={"cut_after": 12}))
    assert done
    assert chat_text(events[:-1]) == f"{FIXED[0]} {FIXED[1]} "
    assert events[-1]["error"]["code"] == "upstream_stream_broken"
    assert rig.aligner is not None and len(rig.aligner.calls) == 2
    assert rig.backend.streams[0].closed and rig.backend.streams[0].closed_complete is False


async def test_an_error_event_from_the_backend_mid_answer() -> None:
    events, done = await stream(rig_(), body(fake={"error_after": 5}))
    assert done
    assert chat_text(events[:-1]) == f"{FIXED[0]} "
    assert events[-1]["error"]["code"] == "upstream_stream_broken"
    assert "ran out of memory" in events[-1]["error"]["message"]


async def test_a_backend_refusing_before_it_streams_is_relayed() -> None:
    rig = rig_()
    async with connect(rig) as c:
        r = await c.http.post("/v1/chat/completions", json=body(fake={"status": 503}), headers=arm("align"))
    assert r.status_code == 503 and r.json()["error"]["message"] == "backend exploded"
    assert rig.aligner is not None and rig.aligner.calls == []


async def test_client_disconnect_mid_stream_cancels_the_backend_and_the_aligner() -> None:
    aligner = AlignerEngine(block=True, block_if="Second one")
    rig = rig_(aligner)
    data = json.dumps(body(fake={"token_delay_s": 0.02})).encode()
    gone = asyncio.Event()
    pieces: list[bytes] = []

    async def send(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.body" and message.get("body"):
            pieces.append(message["body"])

    async def hang_up() -> None:
        await wait_until(lambda: len(aligner.calls) == 2)  # the second sentence is being corrected
        gone.set()

    watcher = asyncio.ensure_future(hang_up())
    await asyncio.wait_for(rig.app(http_scope("/v1/chat/completions", arm("align")), hang_up_after(data, gone),
                                   send), 5)
    await watcher
    await wait_until(lambda: aligner.cancelled == 1)
    [backend_stream] = rig.backend.streams
    assert backend_stream.closed and backend_stream.closed_complete is False
    assert b"".join(pieces).count(b"CORRECTED") == 1  # the first sentence went out, nothing after


# ---------------------------------------------------------------- metrics and accounting


async def test_metrics_per_sentence_and_per_answer() -> None:
    before = (sentences_total("corrected"), sentences_total("code"),
              sample("aligngate_aligner_sentence_seconds_count"),
              sample("aligngate_helper_duration_seconds_count", helper="aligner"))
    await stream(rig_(), body("One. Two.\n---\nThree."))
    after = (sentences_total("corrected"), sentences_total("code"),
             sample("aligngate_aligner_sentence_seconds_count"),
             sample("aligngate_helper_duration_seconds_count", helper="aligner"))
    assert [a - b for a, b in zip(after, before, strict=True)] == [3, 1, 3, 1]


async def test_waiting_on_the_backend_and_the_aligner_is_not_gateway_overhead() -> None:
    rig = rig_(AlignerEngine(delay_s=0.1))
    sum_before, count_before = overhead("align")
    _, done = await stream(rig, body(fake={"token_delay_s": 0.03}), trace=False)
    assert done
    sum_after, count_after = overhead("align")
    assert count_after - count_before == 1
    assert sum_after - sum_before < 0.1


async def test_buffer_mode_with_a_sentence_template_streams_whole_sentences_after_the_whole_answer() -> None:
    rig = make_rig(aligner_template="stream")  # stream: buffer (the default)
    events, done = await stream(rig, body())
    assert done and chat_text(events) == SERVED
    [(_, sent)] = rig.backend.requests
    assert sent["stream"] is False  # fetched whole
    trace = events[-1]["aligngate"]
    assert [s["corrected"] for s in trace["sentences"]] == [f"{FIXED[0]} ", f"{FIXED[1]} ", FIXED[2]]


async def test_a_non_streamed_request_with_a_sentence_template_is_corrected_sentence_by_sentence() -> None:
    rig = rig_()
    async with connect(rig) as c:
        r = await c.http.post("/v1/chat/completions", json={**body(), "stream": False}, headers=arm("align", True))
    assert r.json()["choices"][0]["message"]["content"] == SERVED
    assert len(r.json()["aligngate"]["sentences"]) == 3


# ---------------------------------------------------------------- configuration


def test_sentence_mode_needs_a_sentence_template() -> None:
    from gateway.config import HelperSettings, HelpersSettings

    remote = {"url": "http://h/v1", "model": "a"}
    with pytest.raises(ValueError, match=r"stream: sentence .* needs a sentence template .* not 'aligner-v1'"):
        HelpersSettings(aligner=HelperSettings(**remote, template="aligner-v1", stream="sentence"))
    HelpersSettings(aligner=HelperSettings(**remote, template="stream-chat", stream="sentence"))
    HelpersSettings(aligner=HelperSettings(**remote, template="stream"))  # buffer with a sentence template is fine
    with pytest.raises(ValueError):
        HelperSettings(**remote, stream="sentences")
    assert HelperSettings(**remote).stream == "buffer"


def test_the_default_template_follows_the_mode() -> None:
    from gateway.config import HelperSettings, LocalModelSettings
    from gateway.engines import aligner_template

    remote = HelperSettings(url="http://h/v1", model="a")
    local = HelperSettings(local=LocalModelSettings(model="builtin:smollm2-135m-instruct"))
    assert [aligner_template(h) for h in (remote, local)] == ["aligner-v1", "aligner-chat"]
    assert [aligner_template(h.model_copy(update={"stream": "sentence"})) for h in (remote, local)] == [
        "stream", "stream-chat"
    ]
