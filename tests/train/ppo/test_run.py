"""`aligngate train ppo`: a reward model from `train rm`, then PPO against it on a tiny local Llama (no hub)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("trl")
pytest.importorskip("peft")

import torch

from core.recipe import RecipeError
from gateway.cli import main as cli_main
from tests.train.ppo.support import ppo_recipe
from train import rm
from train.ppo import run as ppo_run
from train.ppo.config import PPOConfig
from train.run import build

pytestmark = pytest.mark.usefixtures("one_thread")


def test_trained_reward_model_loads_with_its_head(tiny_model: Path, reward_adapter: Path) -> None:
    model, tokenizer = rm.load_trained_reward_model(reward_adapter)
    assert model.config.pad_token_id == tokenizer.pad_token_id is not None
    again, _ = rm.load_trained_reward_model(reward_adapter)
    # The trained score head comes from the adapter, not a fresh random init: two loads agree.
    assert torch.equal(model.score.weight, again.score.weight)
    fresh, _ = rm.load_trained_reward_model(tiny_model)
    assert fresh.config.num_labels == 1


def test_ppo_trains_against_the_trained_rm(tiny_model: Path, reward_adapter: Path, prefs: Path, tmp_path: Path) -> None:
    out = tmp_path / "ppo"
    result = ppo_run.main(ppo_recipe(tiny_model, reward_adapter, prefs, out, "merge=true"))
    adapter = Path(result["adapter"])
    from safetensors.torch import load_file

    weights = load_file(str(adapter / "adapter_model.safetensors"))
    assert any(v.abs().sum().item() > 0 for k, v in weights.items() if "lora_B" in k)
    rows = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2]
    assert "eval_reward_mean" in rows[0] and "eval_reward_mean" in rows[2]
    for key in ("reward_mean", "kl", "kl_coef", "policy_loss", "value_loss", "approx_kl", "response_length"):
        assert key in rows[1]
    for key in ("eval_score_mean", "eval_eos_rate"):
        assert key in rows[0] and key in rows[2]
    assert {"score_mean", "eos_rate"} <= rows[1].keys()
    assert (out / "ppo.png").stat().st_size > 0
    assert list((out / "runs").iterdir()), "TensorBoard events"
    assert (out / "checkpoint-2" / "policy" / "adapter_model.safetensors").is_file()
    assert (Path(result["merged"]) / "config.json").is_file()
    assert result["metrics"]["evals"][0]["step"] == 0
    # Held-out samples of the first and last evaluation; the win-rate tool compares them under the RM.
    before, after = out / "samples" / "step-0.jsonl", out / "samples" / "step-2.jsonl"
    rows0 = [json.loads(line) for line in before.read_text().splitlines()]
    assert rows0 and all(r["prompt"][-1]["role"] == "user" and isinstance(r["response"], str) for r in rows0)
    from train.evaluate import win_rate

    rate = win_rate(reward_adapter, after, before, max_length=64, device="cpu")
    assert rate.n == len(rows0) and 0.0 <= rate.win_rate <= 1.0
    # The gateway's local engine loads the base + PPO adapter.
    from models.local.loader import load_local_model

    assert load_local_model(str(tiny_model), adapter=result["adapter"]) is not None


def test_ppo_resumes_from_its_checkpoint(tiny_model: Path, reward_adapter: Path, prefs: Path, tmp_path: Path) -> None:
    out = tmp_path / "resume"
    ppo_run.main(ppo_recipe(tiny_model, reward_adapter, prefs, out, "eval_prompts=0"))
    state = json.loads((out / "checkpoint-2" / "state.json").read_text())
    assert state["step"] == 2
    result = ppo_run.main(
        ppo_recipe(
            tiny_model, reward_adapter, prefs, out, "eval_prompts=0", "max_steps=3", "resume_from_checkpoint=true"
        )
    )
    rows = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert result["metrics"]["last"]["step"] == 3


def test_ppo_recipe_errors(tiny_model: Path, reward_adapter: Path, prefs: Path, tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="multiple of mini_batch_size"):
        ppo_recipe(tiny_model, reward_adapter, prefs, tmp_path, "batch_size=3")
    with pytest.raises(RecipeError, match="kl_estimator"):
        ppo_recipe(tiny_model, reward_adapter, prefs, tmp_path, "kl_estimator=k2")
    with pytest.raises(RecipeError, match="no prompts"):
        ppo_run.main(ppo_recipe(tiny_model, reward_adapter, prefs, tmp_path / "x", "max_prompt_length=2"))


def test_cli_builds_the_ppoppo_recipe() -> None:
    module, recipe = build("ppo", "train/recipes/ppo.yaml", ["max_steps=3"])
    assert module is ppo_run
    assert isinstance(recipe, PPOConfig) and recipe.max_steps == 3
    # One config: the recipe is what the trainer takes (no bridge); the recipe's LoRA rank reaches it unchanged.
    assert ppo_run.RECIPE is PPOConfig
    assert recipe.lora_r == 16 and recipe.use_lora


def test_cli_reports_a_bad_ppoppo_recipe(capsys: pytest.CaptureFixture[str]) -> None:
    code = cli_main(["train", "ppo", "--config", "train/recipes/ppo.yaml", "batch_size=3"])
    assert code != 0
    assert "mini_batch_size" in capsys.readouterr().err


def test_seeded_and_greedy_evaluations_repeat_exactly(
    tiny_model: Path, reward_adapter: Path, prefs: Path, tmp_path: Path
) -> None:
    recipe = ppo_recipe(tiny_model, reward_adapter, prefs, tmp_path / "ppo", "eval_seed=7")
    trainer, tokenizer, _ = ppo_run.build_trainer(recipe)
    assert trainer.config is recipe and trainer.use_lora
    _, held_out, _ = ppo_run.render_prompts(recipe, tokenizer)
    torch.manual_seed(123)
    training_rng = torch.get_rng_state()
    first = ppo_run.evaluate(trainer, held_out, 4, tmp_path / "a.jsonl", seed=recipe.eval_seed)
    second = ppo_run.evaluate(trainer, held_out, 4, tmp_path / "b.jsonl", seed=recipe.eval_seed)
    # Same policy, same seed: the same answers and scores; the training RNG is where it was.
    assert first == second
    assert (tmp_path / "a.jsonl").read_text() == (tmp_path / "b.jsonl").read_text()
    assert torch.equal(torch.get_rng_state(), training_rng)
    # Greedy: deterministic without a seed, and the training RNG is not touched either.
    greedy = ppo_run.evaluate(trainer, held_out, 4, tmp_path / "g1.jsonl", greedy=True)
    assert greedy == ppo_run.evaluate(trainer, held_out, 4, tmp_path / "g2.jsonl", greedy=True)
    assert (tmp_path / "g1.jsonl").read_text() == (tmp_path / "g2.jsonl").read_text()
    assert torch.equal(torch.get_rng_state(), training_rng)
    # Unseeded, the evaluation draws from (and advances) the training RNG.
    ppo_run.evaluate(trainer, held_out, 4, seed=None)
    assert not torch.equal(torch.get_rng_state(), training_rng)


def test_running_mean_trails_over_the_window() -> None:
    assert ppo_run.running_mean([1.0, 2.0, 3.0, 6.0], 2) == [1.0, 1.5, 2.5, 4.5]
    assert ppo_run.running_mean([4.0, 2.0], 5) == [4.0, 3.0]
    assert ppo_run.running_mean([], 3) == []
