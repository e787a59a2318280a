"""core/recipe.py on its own dataclasses: YAML + typed ``key=value`` overrides, nested keys, clear errors."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from core.recipe import RecipeError, _merge, load_recipe, parse_overrides


@dataclass
class Inner:
    path: str | None = None
    kind: str | None = None
    limit: int | None = None


@dataclass
class Outer:
    name: str = "x"
    steps: int = 1
    rate: float = 0.5
    flag: bool = False
    tags: list[str] = field(default_factory=lambda: ["a"])
    resume: str | bool | None = None
    inner: Inner = field(default_factory=Inner)
    extra: list[Inner] = field(default_factory=list)
    mode: Literal["k1", "k3"] = "k1"


def _match(message: str) -> str:
    return message.replace("(", r"\(").replace(")", r"\)")


def test_parse_overrides_yaml_values() -> None:
    assert parse_overrides(["a=1", "b.c=x", "d=[1, 2]", "e="]) == {"a": 1, "b": {"c": "x"}, "d": [1, 2], "e": ""}


def test_parse_overrides_deep_and_conflicts() -> None:
    assert parse_overrides(["a.b.c=1", "a.b.d=two", "a.e=true"]) == {"a": {"b": {"c": 1, "d": "two"}, "e": True}}
    assert parse_overrides(["x=: not yaml ["]) == {"x": ": not yaml ["}
    with pytest.raises(RecipeError, match="conflicts"):
        parse_overrides(["a=1", "a.b=2"])
    with pytest.raises(RecipeError, match="is not key=value"):
        parse_overrides(["=1"])


def test_merge_is_deep_and_does_not_mutate() -> None:
    base = {"a": 1, "inner": {"path": "p", "kind": "k"}}
    assert _merge(base, {"inner": {"kind": "j"}, "b": 2}) == {"a": 1, "b": 2, "inner": {"path": "p", "kind": "j"}}
    assert base == {"a": 1, "inner": {"path": "p", "kind": "k"}}
    assert _merge({"inner": {"path": "p"}}, {"inner": None}) == {"inner": None}


def test_any_dataclass_from_yaml_and_overrides(tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: from-yaml\nsteps: 5\ninner: {path: a.jsonl, kind: k1}\nextra: [{path: b}]\n")
    config = load_recipe(
        Outer,
        recipe,
        ["steps=7", "rate=1e-4", "flag=true", "inner.kind=k2", "tags=q,v", "resume=true", "inner.limit=null"],
    )
    assert config == Outer(
        name="from-yaml",
        steps=7,
        rate=1e-4,
        flag=True,
        tags=["q", "v"],
        resume=True,
        inner=Inner(path="a.jsonl", kind="k2"),
        extra=[Inner(path="b")],
    )
    assert isinstance(config.rate, float)
    assert load_recipe(Outer, None, ["mode=k3"]).mode == "k3"
    assert load_recipe(Outer) == Outer()
    assert load_recipe(Outer, None, ["rate=3", "name=12", "resume=ckpt"]) == Outer(rate=3.0, name="12", resume="ckpt")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["stepz=3"], "unknown recipe key(s) stepz; known: extra, flag, inner, mode, name"),
        (["inner.pth=x"], "unknown recipe key(s) inner.pth; known: inner.kind, inner.limit, inner.path"),
        (["steps=many"], "steps: expected an integer"),
        (["steps=1.5"], "steps: expected an integer"),
        (["flag=maybe"], "flag: expected true/false"),
        (["rate=fast"], "rate: expected a number"),
        (["name=true"], "name: expected a string"),
        (["inner=3"], "inner: expected a mapping"),
        (["extra=3"], "extra: expected a list"),
        (["inner.limit=lots"], "inner.limit: 'lots' is not a valid"),
        (["mode=k2"], "mode: expected one of k1, k3, got 'k2'"),
        (["novalue"], "is not key=value"),
    ],
)
def test_bad_overrides_are_clear(overrides: list[str], message: str) -> None:
    with pytest.raises(RecipeError, match=_match(message)):
        load_recipe(Outer, None, overrides)


def test_bad_files_are_clear(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="cannot read recipe"):
        load_recipe(Outer, tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1,\n")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(Outer, bad)
    listed = tmp_path / "list.yaml"
    listed.write_text("- 1\n- 2\n")
    with pytest.raises(RecipeError, match="expected a mapping at the top level"):
        load_recipe(Outer, listed)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_recipe(Outer, empty, ["steps=2"]) == Outer(steps=2)


def test_only_dataclasses() -> None:
    with pytest.raises(TypeError, match="needs a dataclass"):
        load_recipe(dict, None)
