"""The bundled prompt sets are what their README says: the HH-RLHF harmless prompts are held out by the training
recipes (never trained on), and the Dolly set is BPO's Dolly evaluation set row for row."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from core.recipe import load_recipe
from gateway.eval.config import PromptSetSpec
from gateway.eval.prompts import bundled_path, load_prompt_set
from train.config import TrainConfig
from train.data import bundled
from train.data.builders import dolly_prompt, train_eval_split
from train.rows import preference_rows

RECIPES_DIR = bundled.DATASETS_DIR.parent / "recipes"


#: The recipes that split the bundled HH-RLHF pairs as preference rows (keyed by prompt): RM, DPO, KTO.
RECIPES = ["rm.yaml", "rm-7b.yaml", "dpo.yaml", "dpo-7b.yaml", "kto.yaml", "kto-7b.yaml"]


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_harmless_prompt_is_held_out_by_the_recipes(recipe: str) -> None:
    config = load_recipe(TrainConfig, None, _split_keys(RECIPES_DIR / recipe))
    assert config.dataset.path == "bundled:hh-rlhf-harmless/pairs.jsonl"
    train, held_out = train_eval_split(preference_rows(config.dataset), config.eval_share, seed=config.seed)
    held = {row["prompt"][0]["content"] for row in held_out}
    trained = {row["prompt"][0]["content"] for row in train}
    prompts = [p.messages[0].content for p in load_prompt_set(PromptSetSpec(bundled="hh-rlhf-harmless"))]
    assert len(prompts) == 152 == len(set(prompts))
    assert set(prompts) <= held
    assert not set(prompts) & trained


@pytest.mark.parametrize("recipe", ["ppo.yaml", "ppo-7b.yaml"])
def test_ppo_never_trains_on_a_harmless_prompt(recipe: str) -> None:
    """PPO takes its prompts from the SFT split (pairs split by prompt, as the preference recipes split them)."""
    from train.ppo.config import PPOConfig
    from train.rows import sft_splits

    config = load_recipe(PPOConfig, RECIPES_DIR / recipe, ["reward_model=unused"])
    assert config.dataset.path == "bundled:hh-rlhf-harmless/pairs.jsonl"
    train, held_out = sft_splits(config)
    prompts = {p.messages[0].content for p in load_prompt_set(PromptSetSpec(bundled="hh-rlhf-harmless"))}
    assert prompts <= {row["prompt"][0]["content"] for row in held_out}
    assert not prompts & {row["prompt"][0]["content"] for row in train}


def _split_keys(path: Path) -> list[str]:
    """The recipe's dataset and split keys as overrides of the shared TrainConfig (the rest is method-specific)."""
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    keys = [
        f"dataset.path={data['dataset']['path']}",
        f"dataset.kind={data['dataset']['kind']}",
        f"eval_share={data['eval_share']}",
    ]
    return keys + ([f"seed={data['seed']}"] if "seed" in data else [])


def test_dolly_set_is_bpo_dolly_eval() -> None:
    source = json.loads(bundled.DOLLY_EVAL.read_text(encoding="utf-8"))
    prompts = load_prompt_set(PromptSetSpec(bundled="dolly-eval"))
    assert [(p.id, p.messages[0].content) for p in prompts] == [(f"dolly-{r['idx']}", dolly_prompt(r)) for r in source]
    assert all(p.criterion == "helpful" for p in prompts)
    assert (bundled_path("dolly-eval").parent / "LICENSE").is_file()
    assert (bundled_path("hh-rlhf-harmless").parent / "LICENSE").is_file()


def test_the_aligner_recipe_never_trains_on_a_harmless_prompt() -> None:
    """The aligner SFT recipe splits the pairs before building its triplets (``train.rows.sft_splits``), with the
    split of the recipes above: no training row's question starts with a held-out prompt's turn."""
    from train.rows import sft_splits
    from train.sft import SFTRecipe

    config = load_recipe(SFTRecipe, RECIPES_DIR / "aligner-sft.yaml")
    assert (config.dataset.task, config.eval_share, config.seed) == ("aligner", 0.1, 0)
    train, held_out = sft_splits(config)
    assert train and held_out
    prompts = [p.messages[0].content for p in load_prompt_set(PromptSetSpec(bundled="hh-rlhf-harmless"))]
    firsts = {_first_turn(row["prompt"][-1]["content"]) for row in train}
    assert not firsts & set(prompts)
    held = {_first_turn(row["prompt"][-1]["content"]) for row in held_out}
    assert set(prompts) <= held


def _first_turn(user: str) -> str:
    """The first human turn of an aligner-chat user message: ``Question: X\nAnswer: …`` for one turn, ``Question:
    Human: X\n\nAssistant: …\nAnswer: …`` for a conversation."""
    assert user.startswith("Question: ")
    question = user.removeprefix("Question: ").split("\nAnswer: ")[0]
    return question.removeprefix("Human: ").split("\n\nAssistant:")[0] if question.startswith("Human: ") else question
