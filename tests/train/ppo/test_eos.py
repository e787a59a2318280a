"""PPO scores finished turns: a response that wrote EOS is scored as a finished chat turn (the reward model's
own template, end-of-turn included, as ``models.reward`` and ``aligngate eval``'s judge score it); a response cut
off at ``max_new_tokens`` is scored as it stands, less ``missing_eos_penalty``."""

from __future__ import annotations

import pytest

from core.recipe import RecipeError, load_recipe
from train.ppo.config import PPOConfig


def test_missing_eos_penalty_recipe_key() -> None:
    assert PPOConfig().missing_eos_penalty == 1.0
    assert load_recipe(PPOConfig, None, ["missing_eos_penalty=0.5"]).missing_eos_penalty == 0.5
    assert load_recipe(PPOConfig, None, ["missing_eos_penalty=2"]).missing_eos_penalty == 2.0
    assert load_recipe(PPOConfig, None, ["missing_eos_penalty=null"]).missing_eos_penalty is None
    assert load_recipe(PPOConfig, None, ["missing_eos_penalty=~"]).missing_eos_penalty is None
    with pytest.raises(RecipeError, match="missing_eos_penalty"):
        load_recipe(PPOConfig, None, ["missing_eos_penalty=-1"])
    with pytest.raises(RecipeError, match="missing_eos_penalty"):
        load_recipe(PPOConfig, None, ["missing_eos_penalty=lots"])
    with pytest.raises(RecipeError, match="max_new_tokens"):
        load_recipe(PPOConfig, None, ["max_new_tokens=0"])
