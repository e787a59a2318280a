"""The aligner's reward gate end to end: real gateway processes whose aligner is a fake OpenAI server and whose gate
is a tiny random reward model built here (saved whole, so the test and the gateway score alike). The test scores the
backend's answer and the correction itself with ``models.reward`` and checks that the gateway served the better one
(whole and streamed), with the scores in the trace, the store's ``gate_*`` columns and the decision metric; a margin
above the difference keeps the raw answer; a reward model path that does not exist stops ``serve`` with one line."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.e2e.support import (
    ROOT,
    Fake,
    Gateway,
    Procs,
    backend,
    clean_env,
    gateway_config,
    metric_sum,
    sse_data,
    wait_for,
)

MODEL = "m"
CORRECTION = "Here is a careful and helpful answer: knead, proof, then bake at 220 C for 30 minutes."
QUESTION = "How do I bake bread at home?"
RAW = f"Hello from backend! You said: {QUESTION}"


@dataclass
class GateStack:
    backend: Fake
    aligner: Fake
    gated: Gateway  # margin 0
    strict: Gateway  # a margin above any difference: the raw answer always
    scores: tuple[float, float]  # (raw, corrected), as models.reward scores them


@pytest.fixture(scope="module")
def gs(module_procs: Procs, tmp_path_factory: pytest.TempPathFactory) -> GateStack:
    import torch

    from models.reward import completion_scores, load_reward_model, scoring_item
    from tests.models.local.tiny import build_random_reward

    torch.set_num_threads(1)
    rm = build_random_reward(tmp_path_factory.mktemp("gate-e2e") / "rm")
    model, tokenizer = load_reward_model(rm)
    user = [{"role": "user", "content": QUESTION}]
    raw, fixed = completion_scores(model, tokenizer, [scoring_item(tokenizer, user, a) for a in (RAW, CORRECTION)],
                                   max_length=64)
    assert raw != fixed
    be = module_procs.fake("backend")
    al = module_procs.fake("aligner", 0, "--reply", CORRECTION)

    def gw(margin: float, tag: str) -> Gateway:
        config = gateway_config(backend(MODEL, be.v1))
        config["helpers"] = {"aligner": {
            "url": al.v1, "model": "aligner", "template": "aligner-v1", "timeout_s": 10,
            "gate": {"reward_model": str(rm), "margin": margin, "max_length": 64, "device": "cpu", "timeout_s": 30},
        }}
        config["experiment"] = {"arms": {"control": 1}, "allow_override": True}
        return module_procs.gateway(config, tag=tag, env={"OMP_NUM_THREADS": "1"})

    return GateStack(be, al, gw(0.0, "gate"), gw(abs(fixed - raw) + 1.0, "gate-strict"), (raw, fixed))


def chat(gw: Gateway, **fields: Any) -> httpx.Response:
    body = {"model": MODEL, "messages": [{"role": "user", "content": QUESTION}], **fields}
    return gw.http.post("/v1/chat/completions", json=body,
                        headers={"X-Aligngate-Arm": "align", "X-Aligngate-Trace": "1"})


def db_row(gw: Gateway, rid: str) -> dict[str, Any] | None:
    try:
        with sqlite3.connect(gw.db_path, timeout=10) as conn:
            conn.row_factory = sqlite3.Row
            found = conn.execute("SELECT * FROM requests WHERE id = ?", (rid,)).fetchone()
    except sqlite3.OperationalError:  # not created yet
        return None
    return dict(found) if found is not None else None


@pytest.mark.parametrize("stream", [False, True])
def test_the_gate_serves_the_better_scored_answer(gs: GateStack, stream: bool) -> None:
    raw, fixed = gs.scores
    decision = "corrected" if fixed > raw else "raw"
    served = CORRECTION if decision == "corrected" else RAW
    before = metric_sum(gs.gated.metrics(), "aligngate_gate_decisions_total", helper="aligner", decision=decision)
    r = chat(gs.gated, stream=stream)
    assert r.status_code == 200, r.text
    if stream:
        events = [json.loads(d) for d in sse_data(r.content) if d != "[DONE]"]
        text = "".join(c["delta"].get("content") or "" for e in events for c in e["choices"])
        trace = events[-1]["aligngate"]
    else:
        text, trace = r.json()["choices"][0]["message"]["content"], r.json()["aligngate"]
    assert text == served
    assert trace["gate"]["decision"] == decision
    assert trace["gate"]["raw"] == pytest.approx(raw, abs=1e-3)
    assert trace["gate"]["corrected"] == pytest.approx(fixed, abs=1e-3)
    assert trace["aligner_skipped"] == (None if decision == "corrected" else "gate_kept_raw")
    row = wait_for(lambda: db_row(gs.gated, r.headers["x-request-id"]), 10, what="the request's row")
    assert row["gate_decision"] == decision and row["final_answer"] == served and row["raw_answer"] == RAW
    assert (row["gate_raw_score"], row["gate_corrected_score"]) == (trace["gate"]["raw"], trace["gate"]["corrected"])
    after = metric_sum(gs.gated.metrics(), "aligngate_gate_decisions_total", helper="aligner", decision=decision)
    assert after == before + 1


def test_a_margin_above_the_difference_keeps_the_raw_answer(gs: GateStack) -> None:
    r = chat(gs.strict)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == RAW
    assert r.json()["aligngate"]["gate"]["decision"] == "raw"
    assert metric_sum(gs.strict.metrics(), "aligngate_gate_decisions_total", helper="aligner", decision="raw") >= 1


def test_a_reward_model_that_does_not_exist_stops_serve_with_one_line(tmp_path: Path) -> None:
    config = gateway_config(backend(MODEL, "http://127.0.0.1:9/v1"))
    config["helpers"] = {"aligner": {"url": "http://127.0.0.1:9/v1", "model": "a",
                                     "gate": {"reward_model": str(tmp_path / "no-such-rm")}}}
    path = tmp_path / "gate.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    done = subprocess.run([sys.executable, "-m", "gateway", "serve", "--config", str(path)], cwd=ROOT,
                          env=clean_env(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("aligngate: helpers.aligner.gate.reward_model: ") and "no-such-rm" in lines[0]
