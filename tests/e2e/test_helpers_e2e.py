"""The helpers end to end: real gateway processes whose rewriter and aligner are fake OpenAI servers.

The helper fakes record every request (``/_fake/requests``), which proves the published templates on the
wire character for character; they answer a fixed plausible text (``--reply``) so the rewriter's guards let
it through. The backend fake answers ``Hello from backend! You said: <last user message>``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.e2e.support import (
    Fake,
    Gateway,
    Procs,
    assert_openai_error,
    backend,
    free_port,
    gateway_config,
    metric_sum,
    sse_data,
    wait_for,
)

# The published strings, written out here on purpose (not imported from models.templates).
BPO = (
    "[INST] You are an expert prompt engineer. Please help me improve this prompt to get a more helpful and "
    "harmless response:\n{prompt} [/INST]"
)
ALIGNER_V1 = (
    "BEGINNING OF CONVERSATION: USER: Edit the following Question-Answer pair to make it more helpful and "
    "harmless: {question} | {answer} ASSISTANT:"
)
ALIGNER_V2 = "BEGINNING OF CONVERSATION: USER: ##Question: {question}\n##Answer: {answer}\n##Correction:  ASSISTANT:"

REWRITE = "Explain step by step how to bake a simple loaf of bread at home, with safe oven temperatures."
CORRECTION = "Here is a careful and helpful answer: knead, proof, then bake at 220 C for 30 minutes."
MODEL = "m"
#: A long correction (the fake counts a word a token): the client's max_tokens and stop must still hold.
LONG = ("Knead the dough well. Let it rise for an hour. Then bake it at 220 C for thirty minutes until golden and "
        "hollow when tapped underneath, and let it cool on a rack before slicing it.")
TOKEN_DELAY_S = 0.05


def bpo(prompt: str) -> str:
    return BPO.replace("{prompt}", prompt)


def aligner_v1(question: str, answer: str) -> str:
    return ALIGNER_V1.replace("{question}", question).replace("{answer}", answer)


def aligner_v2(question: str, answer: str) -> str:
    return ALIGNER_V2.replace("{question}", question).replace("{answer}", answer)


def hello(said: str) -> str:
    return f"Hello from backend! You said: {said}"


def helpers_config(rewriter_url: str, aligner_url: str, aligner_template: str, on_error: str) -> dict[str, Any]:
    return {
        "rewriter": {"url": rewriter_url, "model": "bpo", "template": "bpo", "on_error": on_error, "timeout_s": 10},
        "aligner": {"url": aligner_url, "model": "aligner", "template": aligner_template, "on_error": on_error,
                    "timeout_s": 10},
    }


@dataclass
class HelperStack:
    backend: Fake
    rewriter: Fake
    aligner: Fake
    long_aligner: Fake
    v1: Gateway  # aligner-v1, on_error skip
    v2: Gateway  # aligner-v2
    down_skip: Gateway  # both helpers on a closed port, on_error skip
    down_fail: Gateway  # both helpers on a closed port, on_error fail
    long: Gateway  # an aligner whose correction is LONG


@pytest.fixture(scope="module")
def hs(module_procs: Procs) -> HelperStack:
    be = module_procs.fake("backend")
    rw = module_procs.fake("rewriter", 0, "--reply", REWRITE)
    # streamed corrections come word by word, TOKEN_DELAY_S apart (whole answers are not delayed)
    al = module_procs.fake("aligner", 0, "--reply", CORRECTION, "--token-delay-s", str(TOKEN_DELAY_S))
    long_al = module_procs.fake("long-aligner", 0, "--reply", LONG)
    closed = f"http://127.0.0.1:{free_port()}/v1"

    def gw(helpers: dict[str, Any], tag: str) -> Gateway:
        config = gateway_config(backend(MODEL, be.v1))
        config["helpers"] = helpers
        config["experiment"] = {"arms": {"control": 1}, "allow_override": True}
        return module_procs.gateway(config, tag=tag)

    return HelperStack(
        be, rw, al, long_al,
        v1=gw(helpers_config(rw.v1, al.v1, "aligner-v1", "skip"), "helpers-v1"),
        v2=gw(helpers_config(rw.v1, al.v1, "aligner-v2", "skip"), "helpers-v2"),
        down_skip=gw(helpers_config(closed, closed, "aligner-v1", "skip"), "helpers-down-skip"),
        down_fail=gw(helpers_config(closed, closed, "aligner-v1", "fail"), "helpers-down-fail"),
        long=gw(helpers_config(rw.v1, long_al.v1, "aligner-v1", "skip"), "helpers-long"),
    )


@pytest.fixture(autouse=True)
def _reset(hs: HelperStack) -> Iterator[None]:
    for fake in (hs.backend, hs.rewriter, hs.aligner, hs.long_aligner):
        fake.reset()
    yield


def chat(gw: Gateway, content: str, arm: str, *, trace: bool = True, **fields: Any) -> httpx.Response:
    headers = {"X-Aligngate-Arm": arm}
    if trace:
        headers["X-Aligngate-Trace"] = "1"
    body = {"model": MODEL, "messages": [{"role": "user", "content": content}], **fields}
    return gw.http.post("/v1/chat/completions", json=body, headers=headers)


def only_post(fake: Fake) -> dict[str, Any]:
    posts = fake.posts()
    assert len(posts) == 1, posts
    return posts[0]


# ---------------------------------------------------------------- templates on the wire


def test_bpo_prompt_on_the_wire_and_the_backend_gets_the_rewrite(hs: HelperStack) -> None:
    # braces, a pipe, a lone quote: no number or quoted text the canned rewrite would be refused for dropping
    question = 'How do I bake {bread} at home? | {prompt} % "\n  Thanks!'
    r = chat(hs.v1, question, "rewrite", max_tokens=50)
    assert r.status_code == 200, r.text
    assert r.headers["x-aligngate-arm"] == "rewrite"
    sent = only_post(hs.rewriter)
    assert sent["path"] == "/v1/completions"
    assert sent["body"]["prompt"] == bpo(question)  # character for character
    assert sent["body"]["model"] == "bpo"
    assert (sent["body"]["temperature"], sent["body"]["top_p"]) == (0.6, 0.9)
    to_backend = only_post(hs.backend)["body"]
    assert to_backend["messages"] == [{"role": "user", "content": REWRITE}]
    assert to_backend["max_tokens"] == 50
    body = r.json()
    assert body["choices"][0]["message"]["content"] == hello(REWRITE)
    trace = body["aligngate"]
    assert trace["request_id"] == r.headers["x-request-id"]
    assert trace["arm"] == "rewrite" and trace["rewritten_prompt"] == REWRITE
    assert trace["helper_ms"]["rewriter"] > 0 and trace["helper_ms"]["aligner"] is None
    assert hs.aligner.posts() == []


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_aligner_prompt_on_the_wire_and_the_client_gets_the_correction(hs: HelperStack, version: str) -> None:
    gw, render = (hs.v1, aligner_v1) if version == "v1" else (hs.v2, aligner_v2)
    question = f"What is {{x}} | y?\nAsk the {version} aligner."
    r = chat(gw, question, "align")
    assert r.status_code == 200, r.text
    assert r.headers["x-aligngate-arm"] == "align"
    original = hello(question)
    sent = only_post(hs.aligner)
    assert sent["path"] == "/v1/completions"
    assert sent["body"]["prompt"] == render(question, original)  # character for character
    assert sent["body"]["model"] == "aligner"
    assert sent["body"]["temperature"] == 0.0  # greedy
    assert only_post(hs.backend)["body"]["messages"][-1]["content"] == question
    body = r.json()
    assert body["choices"][0]["message"]["content"] == CORRECTION
    trace = body["aligngate"]
    assert trace["arm"] == "align" and trace["original_content"] == original
    assert trace["rewritten_prompt"] is None and trace["helper_ms"]["aligner"] > 0
    assert hs.rewriter.posts() == []


def test_rewrite_align_asks_the_aligner_about_the_users_own_words(hs: HelperStack) -> None:
    question = "How do I bake bread quickly at home today?"
    r = chat(hs.v2, question, "rewrite+align")
    assert r.status_code == 200, r.text
    assert only_post(hs.rewriter)["body"]["prompt"] == bpo(question)
    assert only_post(hs.backend)["body"]["messages"][-1]["content"] == REWRITE
    assert only_post(hs.aligner)["body"]["prompt"] == aligner_v2(question, hello(REWRITE))
    body = r.json()
    assert body["choices"][0]["message"]["content"] == CORRECTION
    trace = body["aligngate"]
    assert trace["arm"] == "rewrite+align"
    assert trace["rewritten_prompt"] == REWRITE and trace["original_content"] == hello(REWRITE)
    assert trace["helper_ms"]["rewriter"] > 0 and trace["helper_ms"]["aligner"] > 0


def test_completions_through_both_helpers(hs: HelperStack) -> None:
    prompt = "Write a short note about baking bread safely."
    r = hs.v1.http.post("/v1/completions", json={"model": MODEL, "prompt": prompt},
                        headers={"X-Aligngate-Arm": "rewrite+align"})
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["text"] == CORRECTION
    assert "aligngate" not in r.json()
    assert only_post(hs.rewriter)["body"]["prompt"] == bpo(prompt)
    assert only_post(hs.backend)["body"]["prompt"] == REWRITE
    assert only_post(hs.aligner)["body"]["prompt"] == aligner_v1(prompt, hello(REWRITE))


def test_control_calls_no_helper(hs: HelperStack) -> None:
    r = chat(hs.v1, "just the backend please", "control", trace=False)
    assert r.json()["choices"][0]["message"]["content"] == hello("just the backend please")
    assert r.headers["x-aligngate-arm"] == "control"
    assert hs.rewriter.posts() == [] and hs.aligner.posts() == []


def test_a_bad_arm_header_is_a_400(hs: HelperStack) -> None:
    r = chat(hs.v1, "hi", "sideways")
    err = assert_openai_error(r, 400, code="invalid_arm")
    assert "sideways" in err["message"]
    assert hs.backend.posts() == []


# ---------------------------------------------------------------- streamed correction


def test_streamed_alignment_through_the_sdk(hs: HelperStack) -> None:
    question = "Stream me a corrected answer about bread."
    with hs.v1.client() as client:
        stream = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": question}], stream=True,
            stream_options={"include_usage": True}, extra_headers={"X-Aligngate-Arm": "align"},
        )
        chunks = list(stream)
    texts = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert "".join(texts) == CORRECTION
    assert len(texts) == len(CORRECTION.split())  # as the aligner streamed it, word by word
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    to_backend = only_post(hs.backend)["body"]
    assert not to_backend.get("stream")  # the backend's answer is fetched whole, then corrected
    sent = only_post(hs.aligner)["body"]
    assert sent["stream"] is True
    assert sent["prompt"] == aligner_v1(question, hello(question))


def test_streamed_alignment_carries_the_trace_on_the_last_chunk(hs: HelperStack) -> None:
    question = "Trace my streamed correction."
    r = chat(hs.v2, question, "rewrite+align", stream=True)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    assert r.headers["x-aligngate-arm"] == "rewrite+align"
    events = sse_data(r.content)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all("aligngate" not in c for c in chunks[:-1])
    trace = chunks[-1]["aligngate"]
    assert trace["request_id"] == r.headers["x-request-id"]
    assert trace["arm"] == "rewrite+align"
    assert trace["rewritten_prompt"] == REWRITE and trace["original_content"] == hello(REWRITE)
    text = "".join(ch["delta"].get("content") or "" for c in chunks for ch in c["choices"])
    assert text == CORRECTION


def test_the_correction_streams_as_the_aligner_generates_it(hs: HelperStack) -> None:
    """Each word reaches the client when the aligner makes it, not once the whole correction is done."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": "When do the words arrive?"}], "stream": True}
    arrivals: list[float] = []
    with httpx.stream("POST", f"{hs.v1.v1}/chat/completions", json=body, headers={"X-Aligngate-Arm": "align"},
                      timeout=30) as resp:
        assert resp.status_code == 200
        for line in resp.iter_lines():
            if line.startswith("data: {") and '"content":"' in line and '"content":""' not in line:
                arrivals.append(time.monotonic())
    words = len(CORRECTION.split())
    assert len(arrivals) == words
    assert arrivals[-1] - arrivals[0] >= 0.6 * TOKEN_DELAY_S * (words - 1)


def test_n2_corrects_each_choice(hs: HelperStack) -> None:
    question = "Two answers, please."
    r = chat(hs.v1, question, "align", n=2)
    assert r.status_code == 200, r.text
    assert [c["message"]["content"] for c in r.json()["choices"]] == [CORRECTION, CORRECTION]
    assert r.json()["aligngate"]["original_content"] == [hello(question), hello(question)]
    prompts = [p["body"]["prompt"] for p in hs.aligner.posts()]
    assert prompts == [aligner_v1(question, hello(question))] * 2


@pytest.mark.parametrize("stream", [False, True])
def test_tool_calls_pass_through_uncorrected(hs: HelperStack, stream: bool) -> None:
    tools: list[Any] = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    with hs.v1.client() as client:
        kwargs: dict[str, Any] = {
            "model": MODEL, "messages": [{"role": "user", "content": "Weather in Paris?"}], "tools": tools,
            "tool_choice": "required", "extra_headers": {"X-Aligngate-Arm": "align"},
        }
        if stream:
            chunks = list(client.chat.completions.create(stream=True, **kwargs))
            calls = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or []]
            finish = [c.choices[0].finish_reason for c in chunks if c.choices][-1]
        else:
            answer = client.chat.completions.create(**kwargs)
            calls = list(answer.choices[0].message.tool_calls or [])
            finish = answer.choices[0].finish_reason
    assert len(calls) == 1
    call = calls[0]
    assert call.function is not None
    assert (call.function.name, call.function.arguments) == ("get_weather", '{"city": "Paris"}')
    assert finish == "tool_calls"
    assert hs.aligner.posts() == []


# ---------------------------------------------------------------- helpers down


def failures(gw: Gateway, helper: str) -> float:
    return metric_sum(gw.metrics(), "aligngate_helper_failures_total", helper=helper)


def test_helpers_down_with_skip_serve_the_original_and_count_the_failures(hs: HelperStack) -> None:
    gw = hs.down_skip
    before = {h: failures(gw, h) for h in ("rewriter", "aligner")}
    question = "Are the helpers up?"
    r = chat(gw, question, "rewrite+align")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["choices"][0]["message"]["content"] == hello(question)
    assert only_post(hs.backend)["body"]["messages"][-1]["content"] == question
    trace = body["aligngate"]
    assert trace["rewriter_skipped"] == "failed:error" and trace["aligner_skipped"] == "failed:error"
    assert trace["rewritten_prompt"] is None and trace["original_content"] == hello(question)
    # streamed: the original answer, streamed
    with gw.client() as client:
        stream = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": question}], stream=True,
            extra_headers={"X-Aligngate-Arm": "align"},
        )
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == hello(question)
    samples = gw.metrics()
    assert metric_sum(samples, "aligngate_helper_failures_total", helper="rewriter", reason="error") >= 1
    assert failures(gw, "rewriter") - before["rewriter"] == 1
    assert failures(gw, "aligner") - before["aligner"] == 2


@pytest.mark.parametrize(("arm", "helper"), [("rewrite", "rewriter"), ("align", "aligner")])
@pytest.mark.parametrize("stream", [False, True])
def test_helpers_down_with_fail_answer_502_naming_the_helper(
    hs: HelperStack, arm: str, helper: str, stream: bool
) -> None:
    gw = hs.down_fail
    before = failures(gw, helper)
    r = chat(gw, f"Is the {helper} up?", arm, stream=stream)
    err = assert_openai_error(r, 502, code="helper_failed", type_="upstream_error")
    assert helper in err["message"]
    assert "Traceback" not in err["message"]
    assert r.headers["x-aligngate-arm"] == arm
    assert failures(gw, helper) - before == 1
    assert len(hs.backend.posts()) == (0 if helper == "rewriter" else 1)


def test_readyz_shows_each_helpers_start_up_probe(module_procs: Procs) -> None:
    """Probed once at start (helpers.probe): the fake rewriter's reply answers the probe question instead of
    rewriting it, so it is a warning with a hint; the aligner behind a closed port failed; readiness itself is
    the backend's."""
    be = module_procs.fake("backend-probe")
    rw = module_procs.fake("rewriter-probe", 0, "--reply", "The capital of France is Paris.")
    closed = f"http://127.0.0.1:{free_port()}/v1"
    config = gateway_config(backend(MODEL, be.v1))
    config["helpers"] = {**helpers_config(rw.v1, closed, "aligner-v1", "skip"), "probe": True}
    gw = module_procs.gateway(config, tag="helpers-probe")

    def probed() -> dict[str, Any] | None:
        body: dict[str, Any] = httpx.get(f"{gw.url}/readyz", timeout=10).json()
        done = all(p["status"] != "pending" for p in body["helpers"].values())
        return body if done else None

    body = wait_for(probed, what="the helper probes")
    assert body["status"] == "ready"
    rewriter, aligner = body["helpers"]["rewriter"], body["helpers"]["aligner"]
    assert (rewriter["status"], rewriter["reason"], rewriter["template"]) == ("warning", "answered", "bpo")
    assert "instead of rewriting" in rewriter["hint"]
    assert (aligner["status"], aligner["reason"]) == ("failed", "error")
    assert len(rw.posts()) == 1  # once
    assert gw.log_lines("helper probe: rewriter warning")


# ---------------------------------------------------------------- what the client asked for holds


def _ask(gw: Gateway, stream: bool, **fields: Any) -> tuple[str, str | None, Any]:
    """(text, finish_reason, usage) of an align-arm chat through the SDK."""
    with gw.client() as client:
        kwargs: dict[str, Any] = {"model": MODEL, "messages": [{"role": "user", "content": "How do I bake bread?"}],
                                  "extra_headers": {"X-Aligngate-Arm": "align"}, **fields}
        if not stream:
            answer = client.chat.completions.create(**kwargs)
            return answer.choices[0].message.content or "", answer.choices[0].finish_reason, answer.usage
        chunks = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finish = [c.choices[0].finish_reason for c in chunks if c.choices][-1]
    return text, finish, chunks[-1].usage


@pytest.mark.parametrize("stream", [False, True])
def test_max_tokens_holds_on_the_correction_and_usage_says_what_was_delivered(hs: HelperStack, stream: bool) -> None:
    text, finish, usage = _ask(hs.long, stream, max_tokens=5)
    # the backend's answer was cut at 5 tokens, so the correction may be cut there too, and says so
    assert text == " ".join(LONG.split()[:5]) and finish == "length"
    sent = only_post(hs.long_aligner)["body"]
    assert sent["max_tokens"] == 5  # the aligner's own generation capped at the client's limit
    assert usage is not None and usage.completion_tokens == 5 and usage.total_tokens == usage.prompt_tokens + 5
    extra = usage.model_extra or {}
    assert extra["aligngate"]["backend_completion_tokens"] == 5
    assert extra["aligngate"]["aligner"]["completion_tokens"] == 5 and extra["aligngate"]["rewriter"] is None


@pytest.mark.parametrize("stream", [False, True])
def test_stop_sequences_hold_on_the_correction(hs: HelperStack, stream: bool) -> None:
    text, finish, usage = _ask(hs.long, stream, stop=["Then"], max_tokens=200)
    assert text == "Knead the dough well. Let it rise for an hour." and finish == "stop"
    assert only_post(hs.long_aligner)["body"]["stop"] == ["Then"]
    assert usage is not None and 0 < usage.completion_tokens < len(LONG.split())


def test_a_correction_longer_than_an_uncut_answer_allows_keeps_the_answer(hs: HelperStack) -> None:
    r = chat(hs.long, "Hi", "align", max_tokens=20)  # the backend's answer fits in 20: not cut
    body = r.json()
    assert body["choices"][0]["message"]["content"] == hello("Hi")
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["aligngate"]["aligner_skipped"] == "truncated"
    assert body["aligngate"]["helper_tokens"]["aligner"]["completion_tokens"] == 20
    assert body["usage"]["completion_tokens"] == len(hello("Hi").split())


def test_completions_respect_max_tokens_too(hs: HelperStack) -> None:
    r = hs.long.http.post("/v1/completions", json={"model": MODEL, "prompt": "Bake bread", "max_tokens": 4},
                          headers={"X-Aligngate-Arm": "align"})
    choice = r.json()["choices"][0]
    assert choice["text"] == " ".join(LONG.split()[:4]) and choice["finish_reason"] == "length"
    assert r.json()["usage"]["completion_tokens"] == 4
