"""Fixtures shared by the PPO run tests: preference pairs and a LoRA reward model written by `train rm`."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.train.support import preference_pairs, write_jsonl
from train import rm
from train.common import load_recipe


@pytest.fixture(scope="session")
def prefs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("ppo-prefs") / "prefs.jsonl", preference_pairs(24))


@pytest.fixture(scope="session")
def reward_adapter(tiny_model: Path, prefs: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA reward model (adapter + score head) written by `train rm`."""
    out = tmp_path_factory.mktemp("ppo-rm")
    config = load_recipe(
        rm.RMRecipe,
        None,
        [
            f"model={tiny_model}",
            f"output_dir={out}",
            f"dataset.path={prefs}",
            "max_steps=2",
            "max_length=48",
            "eval_share=0",
            "lora_r=4",
            "lora_alpha=8",
            "report_to=[]",
            "disable_tqdm=true",
            "save_steps=2",
        ],
    )
    return Path(rm.main(config)["adapter"])
