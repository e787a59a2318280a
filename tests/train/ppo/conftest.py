"""Fixtures shared by the PPO run tests: preference pairs and a LoRA reward model written by `train rm`."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.train.support import preference_pairs, train_tiny_reward_adapter, write_jsonl


@pytest.fixture(scope="session")
def prefs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("ppo-prefs") / "prefs.jsonl", preference_pairs(24))


@pytest.fixture(scope="session")
def reward_adapter(tiny_model: Path, prefs: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA reward model (adapter + score head) written by `train rm`."""
    return train_tiny_reward_adapter(tiny_model, prefs, tmp_path_factory.mktemp("ppo-rm"))
