"""The reward-model judge on a tiny reward model trained here (no hub), through the two-sided target: a fake
remote model (candidate) against a tiny local model (baseline), each answered through its own in-process gateway,
each answer scored as a finished assistant turn by the code the trainers score with."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.support import Procs
from tests.gateway.eval.support import prompts_jsonl, read_jsonl, run_eval, write_yaml
from tests.train.support import preference_pairs, train_tiny_reward_adapter, write_jsonl


@pytest.fixture(scope="module")
def tiny_rm(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(tiny random Llama, a 2-step LoRA reward adapter on it)."""
    import torch

    from tests.models.local.tiny import build_random

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("eval-rm")
    model = build_random(root / "tiny")
    prefs = write_jsonl(root / "prefs.jsonl", preference_pairs(8))
    return model, train_tiny_reward_adapter(model, prefs, root / "rm")


def test_two_models_judged_by_a_reward_model(procs: Procs, tmp_path: Path, tiny_rm: tuple[Path, Path]) -> None:
    from models.reward import completion_scores, load_reward_model, scoring_item

    model, adapter = tiny_rm
    remote = procs.fake("candidate")
    prompts = prompts_jsonl(tmp_path / "p.jsonl", ["the quick brown fox", "hello world"])
    config = write_yaml(
        tmp_path / "eval.yaml",
        {
            "prompts": [{"path": str(prompts)}],
            "target": {
                "candidate": {"url": remote.v1, "model": "fake-model"},
                "baseline": {"local": {"model": str(model)}},
            },
            "judges": [
                {"reward_model": str(adapter), "max_length": 64},
                {"name": "lenient", "reward_model": str(adapter), "tie_margin": 1000.0, "max_length": 64},
            ],
            "generation": {"max_tokens": 4},
        },
    )
    out = tmp_path / "out"
    result = run_eval("--config", str(config), "--out", str(out), cwd=tmp_path, timeout=300)
    assert result.code == 0, result.err
    rows = {r["judge"]: r for r in result.headline["results"]}
    assert set(rows) == {"rm:final", "lenient"}
    assert all((r["arm"], r["baseline"], r["n"]) == ("candidate", "baseline", 2) for r in rows.values())
    assert rows["lenient"]["ties"] == 2  # every difference is within a margin of 1000

    answers = {(a["prompt_id"], a["arm"]): a["text"] for a in read_jsonl(out / "answers.jsonl")}
    assert answers[("p0", "candidate")] == "Hello from candidate! You"  # 4 tokens of the fake's hello
    rm, tokenizer = load_reward_model(adapter)
    for j in read_jsonl(out / "judgements.jsonl"):
        if j["judge"] != "rm:final":
            continue
        text = PROMPTS[j["prompt_id"]]
        items = [
            scoring_item(tokenizer, [{"role": "user", "content": text}], answers[(j["prompt_id"], arm)])
            for arm in ("candidate", "baseline")
        ]
        expected = completion_scores(rm, tokenizer, items, max_length=64)
        assert j["scores"] == pytest.approx(expected, abs=1e-5)
        assert j["outcome"] == ("win" if expected[0] > expected[1] else "lose" if expected[0] < expected[1] else "tie")


PROMPTS = {"p0": "the quick brown fox", "p1": "hello world"}
