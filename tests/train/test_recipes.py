"""Recipes: YAML → dataclass, typed ``key=value`` overrides, clear errors; the bundled recipes all parse;
``aligngate train`` parses its arguments and reports missing methods clearly."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.recipe import RecipeError, load_recipe
from train.config import DatasetSpec, TrainConfig
from train.data import bundled
from train.rows import dataset_path

RECIPES = Path(__file__).resolve().parents[2] / "train" / "recipes"
ROOT = Path(__file__).resolve().parents[2]


def test_overrides_are_typed_and_nested(tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: some/dir\nmax_steps: 5\ndataset: {path: a.jsonl, kind: preferences}\n")
    config = load_recipe(
        TrainConfig,
        recipe,
        [
            "max_steps=7",
            "learning_rate=1e-4",
            "lora=false",
            "dataset.kind=hh-rlhf",
            "lora_target_modules=q_proj,v_proj",
            "resume_from_checkpoint=true",
            "eval_steps=null",
        ],
    )
    assert config.model == "some/dir"
    assert config.max_steps == 7
    assert config.learning_rate == pytest.approx(1e-4)
    assert config.lora is False
    assert config.dataset == DatasetSpec(path="a.jsonl", kind="hh-rlhf")
    assert config.lora_target_modules == ["q_proj", "v_proj"]
    assert config.resume_from_checkpoint is True
    assert config.eval_steps is None


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["max_stepz=3"], "unknown recipe key(s) max_stepz"),
        (["dataset.pth=x"], "unknown recipe key(s) dataset.pth"),
        (["max_steps=many"], "max_steps: expected an integer"),
        (["lora=maybe"], "lora: expected true/false"),
        (["novalue"], "is not key=value"),
    ],
)
def test_bad_overrides_are_clear(overrides: list[str], message: str) -> None:
    with pytest.raises(RecipeError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_recipe(TrainConfig, None, overrides)


@pytest.mark.parametrize("recipe", sorted(p.name for p in RECIPES.glob("*.yaml")))
def test_bundled_recipes_parse(recipe: str) -> None:
    pytest.importorskip("trl")
    from train.run import build

    method = recipe.removesuffix(".yaml").removesuffix("-7b")
    method = "sft" if method.endswith("sft") else method.split("-")[0]  # rm-gate.yaml is an rm recipe
    _, config = build(method, str(RECIPES / recipe), ["max_steps=1"])
    assert config.max_steps == 1
    assert dataset_path(config.dataset, bundled.HH_RLHF_HARMLESS).is_file()


@pytest.mark.parametrize("recipe", sorted(p.name for p in RECIPES.glob("rm*.yaml")))
def test_reward_recipes_split_every_source(recipe: str) -> None:
    # each source is loaded and split under its own name (two bundled files of one folder once shared a name)
    pytest.importorskip("trl")
    from train import rm
    from train.run import build

    _, config = build("rm", str(RECIPES / recipe), ["max_steps=1"])
    assert isinstance(config, rm.RMRecipe)
    train_rows, held_out = rm.split_sources(config)
    assert len(held_out) == 1 + len(config.extra_datasets) and all(held_out.values()) and train_rows


def test_recipe_count() -> None:
    names = {p.stem for p in RECIPES.glob("*.yaml")}
    base = {"rewriter-sft", "aligner-sft", "base-sft", "rm", "dpo", "kto"}
    assert names >= base | {f"{n}-7b" for n in base}


def test_cli_rejects_unknown_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("trl")
    from gateway.cli import main

    assert main(["train", "sft", "max_stepz=1"]) == 2
    assert "unknown recipe key(s) max_stepz" in capsys.readouterr().err
    assert main(["train", "sft", "oops"]) == 2
    assert "key=value" in capsys.readouterr().err


def test_cli_ppo_is_clear_until_wired(capsys: pytest.CaptureFixture[str]) -> None:
    from gateway.cli import main
    from train.run import METHODS, MethodUnavailable, method_module

    try:
        method_module("ppo")
    except MethodUnavailable:
        assert main(["train", "ppo", "max_steps=1"]) == 2
        assert "ppo" in capsys.readouterr().err
    else:  # PPO has been wired: its module defines RECIPE and main
        assert METHODS["ppo"]


def test_cli_train_sft_subprocess(tmp_path: Path) -> None:
    """One real `python -m gateway train sft --config RECIPE max_steps=2` on the tiny model."""
    pytest.importorskip("trl")
    from tests.models.local.tiny import build_random

    model = build_random(tmp_path / "tiny")
    data = tmp_path / "pc.jsonl"
    data.write_text(
        "".join(
            f'{{"prompt": "the quick brown fox {i}", "completion": " jumps over the lazy dog"}}\n' for i in range(8)
        )
    )
    out = tmp_path / "out"
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"model: {model}\noutput_dir: {out}\ndataset: {{path: {data}, kind: prompt-completion}}\n"
        "eval_share: 0.0\nmax_length: 64\nlora_r: 4\nlora_alpha: 8\nsave_steps: 2\nlogging_steps: 1\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(
        [sys.executable, "-m", "gateway", "train", "sft", "--config", str(recipe), "max_steps=2"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "final" / "adapter_config.json").is_file()
    assert (out / "checkpoint-2").is_dir()
    assert list(out.rglob("events.out.tfevents.*")), "no TensorBoard logs"
