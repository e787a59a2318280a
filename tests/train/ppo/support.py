"""The tiny PPO recipe the run tests start from (a few rollouts of a few tokens on the tiny local Llama)."""

from __future__ import annotations

from pathlib import Path

from core.recipe import load_recipe
from train.ppo.config import PPOConfig


def ppo_recipe(model: Path, reward: Path, data: Path, out: Path, *extra: str) -> PPOConfig:
    return load_recipe(
        PPOConfig,
        None,
        [
            f"model={model}",
            f"reward_model={reward}",
            f"output_dir={out}",
            f"dataset.path={data}",
            "max_steps=2",
            "batch_size=4",
            "mini_batch_size=2",
            "ppo_epochs=1",
            "max_new_tokens=6",
            "learning_rate=0.01",
            "eval_share=0.25",
            "eval_prompts=4",
            "eval_steps=2",
            "lora_r=4",
            "lora_alpha=8",
            "lora_dropout=0.0",
            "save_steps=1",
            "report_to=[tensorboard]",
            "disable_tqdm=true",
            *extra,
        ],
    )
