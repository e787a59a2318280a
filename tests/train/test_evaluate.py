"""train/evaluate.py: RM pairwise accuracy and win rate under an RM, on a tiny local Llama reward model (no hub)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("trl")
pytest.importorskip("peft")

import torch

from tests.train.support import WORDS, preference_pairs, train_tiny_reward_adapter, write_jsonl
from train import evaluate, rm
from train.config import DatasetSpec
from train.data.builders import train_eval_split
from train.rows import preference_rows

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def prefs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("eval-prefs") / "prefs.jsonl", preference_pairs(24))


@pytest.fixture(scope="module")
def tiny_rm(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained reward model saved as an HF directory: its random score head is saved, so loads agree."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    base = tiny_model
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(str(base), num_labels=1)
    tokenizer = AutoTokenizer.from_pretrained(str(base))
    model.config.pad_token_id = tokenizer.pad_token_id
    out = tmp_path_factory.mktemp("eval-rm")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def responses(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two response sets to the same 8 prompts (string and chat prompts, all three response keys), B shuffled."""
    folder = tmp_path_factory.mktemp("eval-responses")
    a_rows: list[dict[str, Any]] = []
    b_rows: list[dict[str, Any]] = []
    for i in range(8):
        prompt: Any = f"please repeat {WORDS[i]} {WORDS[i + 1]}"
        if i % 2:
            prompt = [{"role": "system", "content": "be brief"}, {"role": "user", "content": prompt}]
        key = ("response", "completion", "output")[i % 3]
        a_rows.append({"prompt": prompt, key: f"{WORDS[i]} {WORDS[i + 1]}"})
        b_rows.append({"prompt": prompt, "response": f"the lazy dog says {WORDS[i + 2]}"})
    b_rows.reverse()
    b_rows[0]["response"] = a_rows[-1]["completion"]  # prompt 7: the same response in A and B, a tie
    return write_jsonl(folder / "a.jsonl", a_rows), write_jsonl(folder / "b.jsonl", b_rows)


# --------------------------------------------------------------------------------------------- pure statistics


def test_wilson_interval_against_hand_computed_values() -> None:
    # 8/10, z = 1.959964: centre (0.8 + z²/20) / (1 + z²/10), half-width z·sqrt(0.016 + z²/400) / (1 + z²/10)
    assert evaluate.wilson_interval(8, 10) == pytest.approx((0.4901625, 0.9433178), abs=1e-6)
    # a tie counts 1/2: 2.5 of 5 → centre 0.5, half-width z·sqrt(0.05 + z²/100) / (1 + z²/5) = 0.3295757
    assert evaluate.wilson_interval(2.5, 5) == pytest.approx((0.1704243, 0.8295757), abs=1e-6)
    assert evaluate.wilson_interval(0, 4) == (0.0, pytest.approx(0.4898908, abs=1e-6))
    assert evaluate.wilson_interval(4, 4) == (pytest.approx(0.5101092, abs=1e-6), 1.0)


def test_accuracy_and_win_rate_from_scores() -> None:
    acc = evaluate.accuracy_of([(2.0, 1.0), (0.0, 1.0), (3.0, 1.0), (1.0, 1.0)], truncated=1, dropped=2)
    assert (acc.accuracy, acc.n, acc.truncated, acc.dropped) == (0.5, 4, 1, 2)  # a tie is not a win
    assert acc.mean_margin == pytest.approx(0.5)
    assert (acc.low, acc.high) == evaluate.wilson_interval(2, 4)

    rate = evaluate.win_rate_of([(1.0, 0.0), (0.0, 1.0), (1.0, 1.0), (2.0, 0.0)])
    assert (rate.wins, rate.ties, rate.losses, rate.n) == (2, 1, 1, 4)
    assert rate.win_rate == 2.5 / 4
    assert (rate.mean_score_a, rate.mean_score_b) == (1.0, 0.5)
    assert (rate.low, rate.high) == evaluate.wilson_interval(2.5, 4)
    with pytest.raises(evaluate.EvalError):
        evaluate.win_rate_of([])


def test_responses_match_by_prompt_and_occurrence(tmp_path: Path) -> None:
    a = write_jsonl(
        tmp_path / "a.jsonl",
        [{"prompt": "x", "response": "a1"}, {"prompt": "y", "output": "a2"}, {"prompt": "x", "completion": "a3"}],
    )
    b = write_jsonl(
        tmp_path / "b.jsonl",
        [
            {"prompt": [{"role": "user", "content": "y"}], "response": "b2"},  # the same prompt as the string "y"
            {"prompt": "x", "response": [{"role": "assistant", "content": "b1"}]},
            {"prompt": "x", "response": "b3"},
        ],
    )
    pairs = evaluate.match_responses(evaluate.read_responses(a), evaluate.read_responses(b))
    assert [(x.response, y.response) for x, y in pairs] == [("a1", "b1"), ("a2", "b2"), ("a3", "b3")]

    c = write_jsonl(tmp_path / "c.jsonl", [{"prompt": "x", "response": "c"}, {"prompt": "z", "response": "c"}])
    with pytest.raises(evaluate.EvalError, match="do not answer the same prompts"):
        evaluate.match_responses(evaluate.read_responses(a), evaluate.read_responses(c))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x"}\n', encoding="utf-8")
    with pytest.raises(evaluate.EvalError, match=r"bad.jsonl:1: no response"):
        evaluate.read_responses(bad)
    bad.write_text("not json\n", encoding="utf-8")
    with pytest.raises(evaluate.EvalError, match=r"bad.jsonl:1: not valid JSON"):
        evaluate.read_responses(bad)


# ------------------------------------------------------------------------------------------ with a reward model


def test_pair_scores_back_pairwise_accuracy(tiny_rm: Path, prefs: Path) -> None:
    model, tokenizer = rm.load_trained_reward_model(tiny_rm)
    rows = preference_rows(DatasetSpec(path=str(prefs)))
    scores = rm.pair_scores(model, tokenizer, rows, max_length=64, batch_size=5)
    assert len(scores) == len(rows)
    assert all(math.isfinite(c) and math.isfinite(r) for c, r in scores)
    accuracy = rm.pairwise_accuracy(model, tokenizer, rows, max_length=64, batch_size=5)
    assert accuracy == sum(c > r for c, r in scores) / len(rows)
    # batching does not change a score beyond float noise (right padding, score at the last real token)
    single = rm.pair_scores(model, tokenizer, rows[:3], max_length=64, batch_size=1)
    assert [x for pair in single for x in pair] == pytest.approx([x for pair in scores[:3] for x in pair], abs=1e-4)
    assert math.isnan(rm.pairwise_accuracy(model, tokenizer, [], max_length=64))


def test_rm_accuracy_on_all_and_held_out_pairs(tiny_rm: Path, prefs: Path) -> None:
    model, tokenizer = rm.load_trained_reward_model(tiny_rm)
    rows = preference_rows(DatasetSpec(path=str(prefs)))
    scores = rm.pair_scores(model, tokenizer, rows, max_length=128)

    # on the CPU in fp32, as the reference scores above (on a GPU host "auto" would pick CUDA and bf16)
    every = evaluate.rm_accuracy(tiny_rm, str(prefs), split="all", max_length=128, batch_size=4, device="cpu")
    assert every.n == len(rows) == 24
    assert 0.0 <= every.low <= every.accuracy <= every.high <= 1.0
    assert every.accuracy == pytest.approx(sum(c > r for c, r in scores) / 24)
    assert every.mean_margin == pytest.approx(sum(c - r for c, r in scores) / 24, abs=1e-4)
    assert (every.truncated, every.dropped) == (0, 0)

    held_out = train_eval_split(rows, 0.5, seed=3)[1]
    assert 0 < len(held_out) < 24
    part = evaluate.rm_accuracy(tiny_rm, str(prefs), split="eval", eval_share=0.5, seed=3, max_length=128)
    assert part.n == len(held_out)
    limited = evaluate.rm_accuracy(tiny_rm, str(prefs), split="all", limit=5, max_length=128)
    assert limited.n == 5


def test_win_rate_against_itself_is_one_half(tiny_rm: Path, responses: tuple[Path, Path]) -> None:
    a, _ = responses
    result = evaluate.win_rate(tiny_rm, a, a, max_length=128, batch_size=3)
    assert result.win_rate == 0.5
    assert (result.ties, result.wins, result.losses, result.n) == (8, 0, 0, 8)
    assert result.mean_score_a == result.mean_score_b
    assert (result.low, result.high) == evaluate.wilson_interval(4, 8)


def test_win_rate_swap_gives_one_minus_the_rate(tiny_rm: Path, responses: tuple[Path, Path]) -> None:
    a, b = responses
    ab = evaluate.win_rate(tiny_rm, a, b, max_length=128, batch_size=3)
    ba = evaluate.win_rate(tiny_rm, b, a, max_length=128, batch_size=3)
    assert ab.n == ba.n == 8
    assert ab.ties == ba.ties >= 1  # prompt 7's identical answers (others may tie too in bf16 on a GPU)
    assert 0.0 <= ab.low <= ab.win_rate <= ab.high <= 1.0
    assert ba.win_rate == pytest.approx(1.0 - ab.win_rate, abs=1e-12)
    assert (ba.wins, ba.losses) == (ab.losses, ab.wins)
    assert (ba.mean_score_a, ba.mean_score_b) == (ab.mean_score_b, ab.mean_score_a)
    assert ab.mean_score_a != ab.mean_score_b


def test_rm_accuracy_of_a_trained_lora_adapter(tiny_rm: Path, prefs: Path, tmp_path: Path) -> None:
    """What `aligngate train rm` writes (a LoRA adapter + score head) is evaluated as is."""
    adapter = train_tiny_reward_adapter(tiny_rm, prefs, tmp_path)
    result = evaluate.rm_accuracy(adapter, str(prefs), split="all", max_length=64, batch_size=8)
    assert result.n == 24 and 0.0 <= result.accuracy <= 1.0


# ------------------------------------------------------------------------------------------------------------ CLI


def _last_json(out: str) -> dict[str, Any]:
    lines = out.strip().splitlines()
    assert len(lines) >= 2, "a human summary comes before the JSON line"
    data: dict[str, Any] = json.loads(lines[-1])
    return data


def test_cli_rm_accuracy(tiny_rm: Path, prefs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["rm-accuracy", "--reward-model", str(tiny_rm), "--data", str(prefs), "--split", "all", "--limit", "6"]
    assert evaluate.main([*argv, "--max-length", "128", "--batch-size", "4"]) == 0
    out = capsys.readouterr().out
    assert "pairwise accuracy:" in out
    data = _last_json(out)
    assert data["command"] == "rm-accuracy" and data["n"] == 6
    assert {"accuracy", "low", "high", "mean_margin", "truncated", "dropped"} <= set(data)


def test_cli_rm_accuracy_on_bundled_data(tiny_rm: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = "bundled:hh-rlhf-harmless/pairs.jsonl"
    argv = ["rm-accuracy", "--reward-model", str(tiny_rm), "--data", data, "--kind", "hh-rlhf", "--limit", "3"]
    assert evaluate.main([*argv, "--max-length", "96"]) == 0
    assert _last_json(capsys.readouterr().out)["n"] <= 3


def test_cli_win_rate(tiny_rm: Path, responses: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    a, b = responses
    assert evaluate.main(["win-rate", "--reward-model", str(tiny_rm), "--a", str(a), "--b", str(b)]) == 0
    out = capsys.readouterr().out
    assert "win rate of A over B:" in out
    data = _last_json(out)
    assert data["command"] == "win-rate" and data["n"] == 8 and data["ties"] >= 1
    assert 0.0 <= data["low"] <= data["win_rate"] <= data["high"] <= 1.0


def test_cli_bad_input_exits_2(
    tiny_rm: Path, prefs: Path, responses: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, _ = responses
    other = write_jsonl(tmp_path / "other.jsonl", [{"prompt": "something else", "response": "x"}])
    assert evaluate.main(["win-rate", "--reward-model", str(tiny_rm), "--a", str(a), "--b", str(other)]) == 2
    assert "do not answer the same prompts" in capsys.readouterr().err

    missing_rm = ["rm-accuracy", "--reward-model", str(tmp_path / "nope"), "--data", str(prefs), "--split", "all"]
    assert evaluate.main(missing_rm) == 2
    assert "does not exist" in capsys.readouterr().err

    no_pairs = write_jsonl(tmp_path / "sft.jsonl", [{"prompt": "p", "completion": "c"}])
    assert evaluate.main(["rm-accuracy", "--reward-model", str(tiny_rm), "--data", str(no_pairs)]) == 2
    assert "no preference pairs" in capsys.readouterr().err

    with pytest.raises(SystemExit) as exc:  # argparse: a bad flag value
        evaluate.main(["rm-accuracy", "--reward-model", str(tiny_rm), "--data", str(prefs), "--eval-share", "2"])
    assert exc.value.code == 2


def test_cli_missing_file_in_a_subprocess(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "train.evaluate", "rm-accuracy", "--reward-model", "builtin:x", "--data", "nope.jsonl"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert "data file nope.jsonl does not exist" in proc.stderr
