"""``aligngate train METHOD --config RECIPE.yaml [key=value ...]``: pick the method's module, build its recipe,
run its ``main``.

A method module exposes ``RECIPE`` (the recipe dataclass, usually a :class:`train.common.TrainConfig` subclass)
and ``main(config) -> dict`` (metrics and output paths). PPO lives in ``train/ppo/``; its entry point is the
module ``train.ppo.run`` with the same two names (until it exists, ``aligngate train ppo`` says so).
"""

from __future__ import annotations

import importlib
import json
import logging
from collections.abc import Sequence
from typing import Any

from core.recipe import RecipeError, load_recipe

METHODS: dict[str, str] = {
    "sft": "train.sft",
    "rm": "train.rm",
    "dpo": "train.dpo",
    "kto": "train.kto",
    "ppo": "train.ppo.run",
}


class MethodUnavailable(RuntimeError):
    """The method's module (or its training dependencies) is not installed / not written yet."""


def method_module(method: str) -> Any:
    """The module of ``method``; :class:`MethodUnavailable` when it (or TRL etc.) cannot be imported."""
    name = METHODS.get(method)
    if name is None:
        raise RecipeError(f"unknown training method {method!r}; expected one of {', '.join(METHODS)}")
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name and (exc.name == name or name.startswith(exc.name + ".")):
            raise MethodUnavailable(
                f"`aligngate train {method}` is not available yet: {name} is missing "
                f"(it must define RECIPE, a recipe dataclass, and main(config))"
            ) from exc
        raise MethodUnavailable(
            f"`aligngate train {method}` needs the training extra ({exc.name} is missing): "
            "pip install 'aligngate[local,train]'"
        ) from exc
    if not hasattr(module, "RECIPE") or not hasattr(module, "main"):
        raise MethodUnavailable(f"{name} does not define RECIPE and main(config) yet")
    return module


def build(method: str, config_path: str | None, overrides: Sequence[str] = ()) -> tuple[Any, Any]:
    """(module, recipe) for ``method`` from the YAML file and overrides; raises RecipeError on a bad recipe."""
    module = method_module(method)
    return module, load_recipe(module.RECIPE, config_path, overrides)


def run(method: str, config_path: str | None, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Train with ``method`` and return what its ``main`` returns (metrics and output paths)."""
    module, recipe = build(method, config_path, overrides)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    result: dict[str, Any] = module.main(recipe)
    print(json.dumps(result, indent=2, default=str))
    return result
