"""gateway/pipeline/gate.py: the aligner's reward gate, through the gateway's routes and middleware with the fake
helpers and backend of ``support.py``: a scripted scorer for the decisions (margin, ties, failures, ``on_error``,
every choice in one call, the trace, the metrics, the store's columns, shadow mode), and a tiny random reward model
built here, scored directly with ``models.reward`` to know which answer the gate must serve."""

from __future__ import annotations

import asyncio
import re
import sqlite3
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY

from gateway.config import ConfigError, Settings, ShadowSettings, StoreSettings, check_servable, load_settings
from gateway.pipeline.gate import KEPT_RAW, Gate, decide
from gateway.pipeline.helpers import OnError
from gateway.store.store import Store
from models.scorer import ScoreItem
from tests.gateway.pipeline.support import CORRECTED, MODEL, AlignerEngine, Rig, make_rig, sse_json

QUESTION = "how to bake bread"
ORIGINAL = f"Answer 0: {QUESTION}"  # the fake backend's answer to QUESTION
FIXED = CORRECTED + ORIGINAL  # the fake aligner's correction of it
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": QUESTION}]
ALIGN_TRACE = {"X-Aligngate-Arm": "align", "X-Aligngate-Trace": "1"}


@dataclass
class ScriptedScorer:
    """Scores an answer by its text (``scores``; anything else 0.0), or fails / blocks; records every call."""

    scores: dict[str, float] = field(default_factory=dict)
    error: Exception | None = None
    block: bool = False
    calls: list[list[ScoreItem]] = field(default_factory=list)

    async def score(self, items: Sequence[ScoreItem]) -> list[float]:
        self.calls.append(list(items))
        if self.block:
            await asyncio.Event().wait()
        if self.error is not None:
            raise self.error
        return [self.scores.get(answer, 0.0) for _, answer in items]


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@asynccontextmanager
async def client(rig: Rig) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=rig.app), base_url="http://gw", timeout=10) as c:
        yield c


async def chat(rig: Rig, **fields: Any) -> httpx.Response:
    async with client(rig) as http:
        body = {"model": MODEL, "messages": MESSAGES, **fields}
        r = await http.post("/v1/chat/completions", json=body, headers=ALIGN_TRACE)
        await r.aread()
    return r


def gated(scorer: Any, margin: float = 0.0, **kw: Any) -> Rig:
    return make_rig(gate=Gate(scorer, margin=margin, timeout_s=kw.pop("timeout_s", 5.0),
                              on_error=kw.get("aligner_on_error", "skip")), **kw)


def streamed(raw: bytes) -> tuple[str, dict[str, Any], list[dict[str, Any]]]:
    """The text of choice 0, the trace, and the events of a streamed answer."""
    events, done = sse_json(raw)
    assert done
    text = "".join(c["delta"].get("content") or "" for e in events for c in e["choices"])
    return text, events[-1]["aligngate"], events


# ---------------------------------------------------------------------------------------------- the decision


def test_the_correction_must_beat_the_raw_answer_by_more_than_the_margin() -> None:
    assert decide(1.0, 1.5, 0.0) == "corrected"
    assert decide(1.0, 1.0, 0.0) == "raw"  # a tie keeps the raw answer
    assert decide(1.0, 0.5, 0.0) == "raw"
    assert decide(1.0, 1.5, 0.5) == "raw"  # exactly the margin is not more than it
    assert decide(1.0, 1.6, 0.5) == "corrected"


@pytest.mark.parametrize(("raw", "fixed", "margin", "served"), [
    (0.0, 1.0, 0.0, FIXED), (1.0, 1.0, 0.0, ORIGINAL), (2.0, 1.0, 0.0, ORIGINAL), (0.0, 1.0, 2.0, ORIGINAL),
])
async def test_a_whole_answer_serves_the_better_scored_text(
    raw: float, fixed: float, margin: float, served: str
) -> None:
    scorer = ScriptedScorer({ORIGINAL: raw, FIXED: fixed})
    decisions = "corrected" if served == FIXED else "raw"
    before = sample("aligngate_gate_decisions_total", helper="aligner", decision=decisions)
    r = await chat(gated(scorer, margin))
    assert r.status_code == 200
    body = r.json()
    assert body["choices"][0]["message"]["content"] == served
    trace = body["aligngate"]
    assert trace["gate"] == {"raw": raw, "corrected": fixed, "decision": decisions}
    assert trace["original_content"] == ORIGINAL
    assert trace["aligner_skipped"] == (None if served == FIXED else KEPT_RAW)
    # scored as finished turns to the user's own messages, both in one call
    assert scorer.calls == [[(MESSAGES, ORIGINAL), (MESSAGES, FIXED)]]
    assert sample("aligngate_gate_decisions_total", helper="aligner", decision=decisions) == before + 1


async def test_a_kept_raw_answer_counts_the_backends_tokens() -> None:
    r = await chat(gated(ScriptedScorer({ORIGINAL: 1.0})))
    usage = r.json()["usage"]
    assert usage["completion_tokens"] == usage["aligngate"]["backend_completion_tokens"] == 4
    assert usage["aligngate"]["aligner"] is not None  # what the aligner spent is still counted


async def test_every_choice_is_scored_in_one_call_and_only_corrections_are_judged() -> None:
    scorer = ScriptedScorer({"Answer 0: x": 0.0, CORRECTED + "Answer 0: x": 1.0, "Answer 1: x": 5.0})
    rig = gated(scorer)
    async with client(rig) as http:
        r = await http.post("/v1/chat/completions", headers=ALIGN_TRACE, json={
            "model": MODEL, "messages": [{"role": "user", "content": "x"}], "n": 3,
            "fake": {"tool_choices": [2]}, "tools": [{"type": "function", "function": {"name": "f"}}]})
    body = r.json()
    assert [c["message"]["content"] for c in body["choices"]] == [CORRECTED + "Answer 0: x", "Answer 1: x", None]
    assert len(scorer.calls) == 1 and len(scorer.calls[0]) == 4  # two corrections, two pairs, one call
    gate = body["aligngate"]["gate"]
    assert [g and g["decision"] for g in gate] == ["corrected", "raw", None]  # tool calls: not judged
    assert body["aligngate"]["aligner_skipped"] == [None, KEPT_RAW, "tool_calls"]


async def test_an_uncorrected_answer_is_not_scored() -> None:
    scorer = ScriptedScorer()
    r = await chat(gated(scorer, aligner=AlignerEngine(text="")))  # an empty correction: a guard keeps the answer
    trace = r.json()["aligngate"]
    assert r.json()["choices"][0]["message"]["content"] == ORIGINAL
    assert trace["aligner_skipped"] == "empty" and "gate" not in trace
    assert scorer.calls == []


async def test_a_buffered_stream_is_gated_before_the_first_byte_and_sent_whole() -> None:
    for raw, served, decision in ((0.0, FIXED, "corrected"), (9.0, ORIGINAL, "raw")):
        r = await chat(gated(ScriptedScorer({ORIGINAL: raw, FIXED: 1.0})), stream=True,
                       stream_options={"include_usage": True})
        assert r.status_code == 200
        text, trace, events = streamed(r.content)
        assert text == served
        assert trace["gate"]["decision"] == decision and trace["original_content"] == ORIGINAL
        texts = [c["delta"]["content"] for e in events for c in e["choices"] if c["delta"].get("content")]
        assert texts == [served]  # the whole gated text in one chunk
        assert events[-1]["usage"]["completion_tokens"] >= 1
        assert [c["finish_reason"] for e in events for c in e["choices"] if c["finish_reason"]] == ["stop"]


@pytest.mark.parametrize("stream", [False, True])
async def test_a_failed_gate_serves_the_raw_answer_with_skip(stream: bool) -> None:
    before = sample("aligngate_helper_failures_total", helper="gate", reason="error")
    r = await chat(gated(ScriptedScorer(error=RuntimeError("CUDA out of memory"))), stream=stream)
    assert r.status_code == 200
    if stream:
        text, trace, _ = streamed(r.content)
    else:
        text, trace = r.json()["choices"][0]["message"]["content"], r.json()["aligngate"]
    assert text == ORIGINAL
    assert trace["aligner_skipped"] == "failed:gate_error"
    assert trace["gate"] == {"raw": None, "corrected": None, "decision": "raw"}
    assert sample("aligngate_helper_failures_total", helper="gate", reason="error") == before + 1


async def test_a_gate_that_takes_too_long_times_out() -> None:
    r = await chat(gated(ScriptedScorer(block=True), timeout_s=0.05))
    assert r.json()["choices"][0]["message"]["content"] == ORIGINAL
    assert r.json()["aligngate"]["aligner_skipped"] == "failed:gate_timeout"


@pytest.mark.parametrize("stream", [False, True])
async def test_a_failed_gate_with_on_error_fail_is_a_502(stream: bool) -> None:
    r = await chat(gated(ScriptedScorer(error=RuntimeError("boom")), aligner_on_error="fail"), stream=stream)
    assert r.status_code == 502
    assert r.json()["error"]["code"] == "helper_failed"
    assert "gate" in r.json()["error"]["message"] and "boom" not in r.text


# ---------------------------------------------------------------------------------------------- store, shadow


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = Store(StoreSettings(url=f"sqlite:///{tmp_path / 'gate.db'}"))
    await s.start()
    yield s
    await s.close()


def rows(store: Store, table: str) -> dict[str, dict[str, Any]]:
    with sqlite3.connect(str(store.url.database)) as conn:
        conn.row_factory = sqlite3.Row
        return {r["id"]: dict(r) for r in conn.execute(f"SELECT * FROM {table}")}


async def test_the_store_records_the_scores_and_the_decision(store: Store) -> None:
    rig = gated(ScriptedScorer({ORIGINAL: 0.25, FIXED: -1.5}), store=store)
    r = await chat(rig)
    await store.flush()
    row = rows(store, "requests")[r.headers["x-request-id"]]
    assert (row["gate_raw_score"], row["gate_corrected_score"], row["gate_decision"]) == (0.25, -1.5, "raw")
    assert (row["raw_answer"], row["final_answer"], row["aligner_skipped"]) == (ORIGINAL, ORIGINAL, KEPT_RAW)


async def test_shadow_corrections_are_gated_too(store: Store) -> None:
    for fixed, decision in ((5.0, "corrected"), (-5.0, "raw")):
        rig = gated(ScriptedScorer({ORIGINAL: 0.0, FIXED: fixed}), store=store, shadow=ShadowSettings(share=1.0))
        async with client(rig) as http:  # assigned control: the answer as it came, a shadow run after it
            r = await http.post("/v1/chat/completions", json={"model": MODEL, "messages": MESSAGES})
        assert r.json()["choices"][0]["message"]["content"] == ORIGINAL
        assert rig.shadow is not None
        await rig.shadow.wait_idle(5)
        await store.flush()
        row = rows(store, "shadow_runs")[r.headers["x-request-id"]]
        assert (row["gate_raw_score"], row["gate_corrected_score"], row["gate_decision"]) == (0.0, fixed, decision)
        assert row["corrected"] == (FIXED if decision == "corrected" else None)
        assert row["aligner_skipped"] == (None if decision == "corrected" else KEPT_RAW)


# ---------------------------------------------------------------------------------------------- config


def test_config_errors_name_the_gate(tmp_path: Path) -> None:
    aligner = {"url": "http://a.invalid/v1", "model": "a"}
    sentence = load_settings(None, {"helpers": {"aligner": {**aligner, "stream": "sentence", "template": "stream",
                                                            "gate": {"reward_model": str(tmp_path)}}}})
    assert sentence.helpers.aligner is not None and sentence.helpers.aligner.gate is not None  # gated per sentence
    with pytest.raises(ConfigError, match=r"helpers.rewriter.gate"):
        load_settings(None, {"helpers": {"rewriter": {**aligner, "gate": {"reward_model": str(tmp_path)}}}})
    missing = Settings.model_validate({
        "backends": [{"name": "m", "urls": ["http://b.invalid"]}],
        "helpers": {"aligner": {**aligner, "gate": {"reward_model": str(tmp_path / "nope")}}},
    })
    with pytest.raises(ConfigError, match=r"helpers.aligner.gate.reward_model: .*nope does not exist"):
        check_servable(missing)

    def gated(path: Path) -> Settings:
        return Settings.model_validate({
            "backends": [{"name": "m", "urls": ["http://b.invalid"]}],
            "helpers": {"aligner": {**aligner, "gate": {"reward_model": str(path)}}},
        })

    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"empty is neither a peft adapter nor a model directory"):
        check_servable(gated(tmp_path / "empty"))
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "adapter_config.json").write_text('{"peft_type": "LORA"}')
    with pytest.raises(ConfigError, match=r"gate.reward_model: adapter .*broken.* has no adapter_model"):
        check_servable(gated(tmp_path / "broken"))


# ---------------------------------------------------------------------------------------------- a real reward model


@pytest.fixture(scope="module")
def tiny_reward(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    from tests.models.local.tiny import build_random_reward

    torch.set_num_threads(1)
    return build_random_reward(tmp_path_factory.mktemp("gate") / "rm")


@pytest.mark.parametrize("correction", [FIXED, "the quick brown fox", "hello world"])
async def test_a_tiny_reward_model_gates_as_its_scores_say(tiny_reward: Path, correction: str) -> None:
    from models.reward import completion_scores, load_reward_model, scoring_item
    from models.scorer import RewardScorer

    model, tokenizer = load_reward_model(tiny_reward)
    raw, fixed = completion_scores(model, tokenizer, [scoring_item(tokenizer, MESSAGES, a)
                                                      for a in (ORIGINAL, correction)], max_length=64)
    assert raw != fixed
    scorer = RewardScorer(tiny_reward, device="cpu", max_length=64)
    await scorer.start()
    try:
        r = await chat(make_rig(gate=Gate(scorer), aligner=AlignerEngine(text=correction)))
        body = r.json()
        assert body["choices"][0]["message"]["content"] == (correction if fixed > raw else ORIGINAL)
        assert body["aligngate"]["gate"]["raw"] == pytest.approx(raw, abs=1e-4)
        assert body["aligngate"]["gate"]["corrected"] == pytest.approx(fixed, abs=1e-4)
        # a margin larger than the difference keeps the raw answer whichever scored higher
        r = await chat(make_rig(gate=Gate(scorer, margin=abs(fixed - raw) + 0.01),
                                aligner=AlignerEngine(text=correction)))
        assert r.json()["choices"][0]["message"]["content"] == ORIGINAL
        assert r.json()["aligngate"]["gate"]["decision"] == "raw"
    finally:
        await scorer.close()


# ---------------------------------------------------------------------------------------------- sentence mode

SENTENCE_REPLY = "First sentence here. Second one is worse fixed. Third?"


@dataclass
class SentenceScorer:
    """Scores an answer so far by its last sentence: a correction (``CORRECTED:``) scores 1 unless it corrects
    ``worse``, which scores -1; the backend's own sentence 0. Fails with ``error``; records every call."""

    worse: str = "worse"
    error: Exception | None = None
    calls: list[list[ScoreItem]] = field(default_factory=list)

    async def score(self, items: Sequence[ScoreItem]) -> list[float]:
        self.calls.append(list(items))
        if self.error is not None:
            raise self.error
        lasts = [re.split(r"(?<=[.?!]) ", answer)[-1] for _, answer in items]
        return [(-1.0 if self.worse in last else 1.0) if last.startswith(CORRECTED) else 0.0 for last in lasts]


def sentence_gated(scorer: Any, on_error: OnError = "skip") -> Rig:
    return make_rig(aligner_template="stream", aligner_stream="sentence", aligner_on_error=on_error,
                    gate=Gate(scorer, margin=0.0, timeout_s=5.0, on_error=on_error))


async def stream_chat(rig: Rig) -> httpx.Response:
    async with client(rig) as http:
        body = {"model": MODEL, "messages": MESSAGES, "stream": True, "fake": {"reply": SENTENCE_REPLY}}
        r = await http.post("/v1/chat/completions", json=body, headers=ALIGN_TRACE)
        await r.aread()
    return r


async def test_sentence_mode_gates_each_sentence_before_it_is_sent() -> None:
    scorer = SentenceScorer()
    before = {d: sample("aligngate_gate_decisions_total", helper="aligner", decision=d) for d in ("corrected", "raw")}
    r = await stream_chat(sentence_gated(scorer))
    assert r.status_code == 200, r.text
    text, trace, _ = streamed(r.content)
    # the second sentence's correction scored below the backend's sentence: the backend's one went out
    assert text == "CORRECTED: First sentence here. Second one is worse fixed. CORRECTED: Third?"
    gates = [(s.get("skipped"), s["gate"]["decision"]) for s in trace["sentences"]]
    assert gates == [(None, "corrected"), (KEPT_RAW, "raw"), (None, "corrected")]
    assert [(s["gate"]["raw"], s["gate"]["corrected"]) for s in trace["sentences"]] == [(0, 1), (0, -1), (0, 1)]
    assert "gate" not in trace  # the verdicts are per sentence
    # each sentence scored once, as the answer so far (the served prefix) ending in either version
    assert [[a for _, a in call] for call in scorer.calls] == [
        ["First sentence here.", "CORRECTED: First sentence here."],
        ["CORRECTED: First sentence here. Second one is worse fixed.",
         "CORRECTED: First sentence here. CORRECTED: Second one is worse fixed."],
        ["CORRECTED: First sentence here. Second one is worse fixed. Third?",
         "CORRECTED: First sentence here. Second one is worse fixed. CORRECTED: Third?"],
    ]
    assert all(prompt == MESSAGES for call in scorer.calls for prompt, _ in call)
    after = {d: sample("aligngate_gate_decisions_total", helper="aligner", decision=d) for d in ("corrected", "raw")}
    assert (after["corrected"] - before["corrected"], after["raw"] - before["raw"]) == (2, 1)


async def test_sentence_mode_gate_failure_keeps_sentences_with_skip_and_ends_the_stream_with_fail() -> None:
    r = await stream_chat(sentence_gated(SentenceScorer(error=RuntimeError("boom"))))
    text, trace, _ = streamed(r.content)
    assert text == SENTENCE_REPLY
    assert {s.get("skipped") for s in trace["sentences"]} == {"failed:gate_error"}
    r = await stream_chat(sentence_gated(SentenceScorer(error=RuntimeError("boom")), on_error="fail"))
    events, done = sse_json(r.content)
    assert done and "error" in events[-1] and "gate" in events[-1]["error"]["message"]
    assert "".join(c["delta"].get("content") or "" for e in events[:-1] for c in e.get("choices", [])) == ""
