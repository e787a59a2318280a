"""Each trainer runs a few steps on CPU on a tiny local Llama (no hub) and changes its trainable weights."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("trl")
pytest.importorskip("peft")

import torch

from core.recipe import RecipeError, load_recipe
from tests.train.support import preference_pairs, write_jsonl
from train import dpo, kto, rm, sft
from train.config import TrainConfig

WORDS = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "lazy",
    "dog",
    "hello",
    "world",
    "tiny",
    "tokenizer",
    "batching",
    "engine",
]


@pytest.fixture(scope="module")
def prefs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """16 conversational preference pairs in the tiny tokenizer's vocabulary."""
    return write_jsonl(tmp_path_factory.mktemp("prefs") / "prefs.jsonl", preference_pairs(16, 4, WORDS))


def _recipe(cls: type[Any], model: Path, data: Path, out: Path, *extra: str) -> Any:
    return load_recipe(
        cls,
        None,
        [
            f"model={model}",
            f"output_dir={out}",
            f"dataset.path={data}",
            "max_steps=2",
            "max_length=64",
            "eval_share=0.3",
            "learning_rate=0.01",
            "lora_r=4",
            "lora_alpha=8",
            "lora_dropout=0.0",
            "logging_steps=1",
            "save_steps=2",
            "report_to=[]",
            "disable_tqdm=true",
            *extra,
        ],
    )


def _lora_weights(adapter: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return {k: v for k, v in load_file(str(adapter / "adapter_model.safetensors")).items() if "lora_B" in k}


def _check_trained(result: dict[str, Any], config: TrainConfig) -> None:
    adapter = Path(result["adapter"])
    assert (adapter / "adapter_config.json").is_file()
    # LoRA B starts at zero: a non-zero B means the optimizer moved the trainable weights.
    weights = _lora_weights(adapter)
    assert weights
    assert any(w.abs().sum().item() > 0 for w in weights.values())
    assert (Path(config.output_dir) / "checkpoint-2").is_dir()


def test_sft_trains_lora_and_merges(tiny_model: Path, prefs: Path, tmp_path: Path) -> None:
    config = _recipe(sft.SFTRecipe, tiny_model, prefs, tmp_path / "sft", "merge=true")
    result = sft.main(config)
    _check_trained(result, config)
    assert (Path(result["merged"]) / "config.json").is_file()
    # The gateway's local engine loads the adapter onto the base model.
    from models.local.loader import load_local_model

    loaded = load_local_model(str(tiny_model), adapter=result["adapter"])
    assert loaded is not None


def test_rm_sets_pad_and_reports_pairwise_accuracy(tiny_model: Path, prefs: Path, tmp_path: Path) -> None:
    config = _recipe(rm.RMRecipe, tiny_model, prefs, tmp_path / "rm")
    model, tokenizer, _ = rm.load_reward_model(config)
    assert model.config.pad_token_id == tokenizer.pad_token_id is not None
    result = rm.main(config)
    _check_trained(result, config)
    accuracy = result["metrics"]["eval_pairwise_accuracy"]
    assert 0.0 <= accuracy <= 1.0


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo"])
def test_dpo_loss_types(tiny_model: Path, prefs: Path, tmp_path: Path, loss_type: str) -> None:
    config = _recipe(dpo.DPORecipe, tiny_model, prefs, tmp_path / "dpo", f"loss_type={loss_type}")
    _check_trained(dpo.main(config), config)


def test_dpo_eval_on_start_gives_a_zero_margin_baseline(tiny_model: Path, prefs: Path, tmp_path: Path) -> None:
    config = _recipe(dpo.DPORecipe, tiny_model, prefs, tmp_path / "dpo0", "eval_on_start=true", "eval_steps=2")
    dpo.main(config)
    state = json.loads((Path(config.output_dir) / "checkpoint-2" / "trainer_state.json").read_text())
    evals = [e for e in state["log_history"] if "eval_rewards/margins" in e]
    assert [e["step"] for e in evals] == [0, 2]
    # Before any update the policy is the reference (adapter B = 0): every implicit reward is exactly 0.
    assert evals[0]["eval_rewards/margins"] == pytest.approx(0.0, abs=1e-6)
    assert evals[1]["eval_rewards/margins"] != pytest.approx(0.0, abs=1e-6)


def test_kto_from_preference_pairs(tiny_model: Path, prefs: Path, tmp_path: Path) -> None:
    config = _recipe(kto.KTORecipe, tiny_model, prefs, tmp_path / "kto", "per_device_train_batch_size=4")
    result = kto.main(config)
    _check_trained(result, config)
    info = json.loads((Path(config.output_dir) / "aligngate-train.json").read_text())
    assert info["adapter"] == result["adapter"]


def test_sft_resumes_from_checkpoint(tiny_model: Path, prefs: Path, tmp_path: Path) -> None:
    out = tmp_path / "resume"
    sft.main(_recipe(sft.SFTRecipe, tiny_model, prefs, out))
    more = ("max_steps=3", "save_steps=3", "resume_from_checkpoint=true")
    config = _recipe(sft.SFTRecipe, tiny_model, prefs, out, *more)
    result = sft.main(config)
    assert result["metrics"]["train_runtime"] >= 0
    assert (out / "checkpoint-3").is_dir()


def test_rm_reports_accuracy_per_source(tiny_model: Path, prefs: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.jsonl"
    rows = [json.loads(line) for line in prefs.read_text().splitlines()]
    for row in rows:
        row["prompt"][0]["content"] += " again"
    other.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    config = _recipe(rm.RMRecipe, tiny_model, prefs, tmp_path / "rm2", f"extra_datasets=[{{path: {other}}}]")
    train_rows, held_out = rm.split_sources(config)
    assert set(held_out) == {"prefs", "other"}
    assert len(train_rows) + sum(len(v) for v in held_out.values()) == 2 * len(rows)
    metrics = rm.main(config)["metrics"]
    for name in ("prefs", "other"):
        assert 0.0 <= metrics[f"eval_pairwise_accuracy/{name}"] <= 1.0
        assert metrics[f"eval_pairs/{name}"] == len(held_out[name])
    overall = sum(metrics[f"eval_pairwise_accuracy/{n}"] * len(held_out[n]) for n in held_out)
    assert metrics["eval_pairwise_accuracy"] == pytest.approx(overall / sum(len(v) for v in held_out.values()))


def test_rm_rejects_two_sources_with_one_name(tiny_model: Path, prefs: Path, tmp_path: Path) -> None:
    config = _recipe(rm.RMRecipe, tiny_model, prefs, tmp_path / "rm3", f"extra_datasets=[{{path: {prefs}}}]")
    with pytest.raises(RecipeError, match="share the name"):
        rm.split_sources(config)


def test_rm_cuts_long_answers_instead_of_dropping_pairs(tiny_model: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model))
    long = " ".join(["the quick brown fox jumps over the lazy dog"] * 20)
    rows = [
        {
            "prompt": [{"role": "user", "content": "hello world"}],
            "chosen": [{"role": "assistant", "content": long}],
            "rejected": [{"role": "assistant", "content": "tiny"}],
        },
        {  # identical once cut: no signal left, dropped
            "prompt": [{"role": "user", "content": "hello"}],
            "chosen": [{"role": "assistant", "content": long + " helpful"}],
            "rejected": [{"role": "assistant", "content": long + " lazy"}],
        },
        {  # the prompt alone leaves no room: dropped
            "prompt": [{"role": "user", "content": long}],
            "chosen": [{"role": "assistant", "content": long}],
            "rejected": [{"role": "assistant", "content": "tiny"}],
        },
    ]
    kept, truncated, dropped = rm.truncate_pairs(rows, tokenizer, max_length=64)
    assert (len(kept), truncated, dropped) == (1, 3, 2)
    text = rm._text(tokenizer, kept[0]["prompt"], kept[0]["chosen"])
    assert len(tokenizer(text, add_special_tokens=False)["input_ids"]) <= 64
    assert long.startswith(kept[0]["chosen"][0]["content"])
    assert kept[0]["rejected"] == rows[0]["rejected"]
