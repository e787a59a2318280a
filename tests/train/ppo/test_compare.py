"""`python -m train.ppo.compare`: greedy held-out answers of the base and of PPO checkpoints, paired."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("peft")

from tests.train.ppo.support import ppo_recipe
from train.ppo import compare
from train.ppo import run as ppo_run

pytestmark = pytest.mark.usefixtures("one_thread")


def test_paired_against_hand_computed_values() -> None:
    mean, stderr, win = compare.paired([1.0, 0.0, 2.0, 1.0], [0.0, 0.0, 1.0, 2.0])
    # differences 1, 0, 1, -1: mean 0.25; sample sd sqrt(((.75)²·2 + .25² + 1.25²)/3) = sqrt(2.75/3); s.e. = sd/2
    assert mean == pytest.approx(0.25)
    assert stderr == pytest.approx((2.75 / 3) ** 0.5 / 2)
    assert win == pytest.approx((1 + 0.5 + 1 + 0) / 4)
    with pytest.raises(ValueError):
        compare.paired([1.0], [1.0, 2.0])


def test_compare_checkpoints_with_the_base(
    tiny_model: Path, reward_adapter: Path, prefs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = tmp_path / "ppo"
    ppo_run.main(ppo_recipe(tiny_model, reward_adapter, prefs, run_dir, "eval_prompts=0"))
    out = tmp_path / "compare"
    code = compare.main(
        [
            str(run_dir / "recipe.json"),
            "disable_tqdm=true",
            "--checkpoints",
            str(run_dir / "checkpoint-1"),
            str(run_dir / "checkpoint-2"),
            "--out",
            str(out),
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out.strip().splitlines()
    summary = json.loads(printed[-1])
    assert list(summary) == ["base", "checkpoint-1", "checkpoint-2"]
    base = summary["base"]
    # The base against itself: no difference, every prompt a tie, and no KL (the adapter is at zero).
    assert base["diff_from_base"] == 0 and base["win_rate_vs_base"] == 0.5 and base["kl"] == pytest.approx(0, abs=1e-5)
    assert base["prompts"] > 0
    # Beside the finished-turn score the comparison is made on: PPO's reward and the share of answers that ended.
    for summary_row in summary.values():
        assert {"score_mean", "reward_mean", "eos_rate"} <= summary_row.keys() and 0 <= summary_row["eos_rate"] <= 1
    rows = [json.loads(line) for line in (out / "checkpoint-2.jsonl").read_text().splitlines()]
    assert len(rows) == base["prompts"] and all(isinstance(r["response"], str) for r in rows)
    assert sum(r["score"] for r in rows) / len(rows) == pytest.approx(summary["checkpoint-2"]["score_mean"])
    assert sum(r["ended"] for r in rows) / len(rows) == pytest.approx(summary["checkpoint-2"]["eos_rate"])
    # The trained adapter moved the policy (the test recipe's learning rate is large): it is not the base.
    assert summary["checkpoint-2"]["kl"] != pytest.approx(0, abs=1e-5)
    assert json.loads((out / "compare.json").read_text())[2]["name"] == "checkpoint-2"


def test_compare_refuses_what_is_not_a_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        compare.main(["train/recipes/ppo.yaml", "--checkpoints", str(tmp_path), "--out", str(tmp_path / "o")])
