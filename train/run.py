"""The entry points of the training methods: ``aligngate train METHOD --config RECIPE.yaml [key=value ...]``
(:func:`run`: pick the method's module, build its recipe, run its ``main``) and ``python -m train.METHOD
RECIPE.yaml [key=value ...]`` (:func:`run_main`, called by each method module).

A method module exposes ``RECIPE`` (the recipe dataclass, usually a :class:`train.config.TrainConfig` subclass)
and ``main(config) -> dict`` (metrics and output paths). PPO lives in ``train/ppo/``; its entry point is the
module ``train.ppo.run`` with the same two names. A method whose module is missing is reported as unavailable.
"""

from __future__ import annotations

import importlib
import json
import logging
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from core.recipe import RecipeError, load_recipe

T = TypeVar("T")

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
    return _report(module.main, recipe)


def run_main(cls: type[T], main: Callable[[T], dict[str, Any]], argv: Sequence[str] | None = None) -> int:
    """``python -m train.METHOD RECIPE.yaml [key=value ...]``: ``main`` on the recipe ``cls`` built from the
    arguments (``sys.argv`` without ``argv``); prints the result as JSON."""
    import sys

    args = list(sys.argv[1:] if argv is None else argv)
    path = args.pop(0) if args and "=" not in args[0] else None
    _report(main, load_recipe(cls, path, args))
    return 0


def _report(main: Callable[[T], dict[str, Any]], recipe: T) -> dict[str, Any]:
    """Log at INFO, run ``main(recipe)``, print its result as JSON and return it."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    result = main(recipe)
    print(json.dumps(result, indent=2, default=str))
    return result
