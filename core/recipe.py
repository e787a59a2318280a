"""Recipes: a YAML file plus ``key=value`` overrides → an instance of any dataclass, type-checked field by field.

* :func:`load_recipe` reads the YAML mapping (optional), merges the overrides over it and builds the dataclass;
* :func:`parse_overrides` turns ``["a=1", "dataset.path=x.jsonl"]`` into a nested dict (values parsed as YAML
  scalars or flow collections; dotted keys reach into nested dataclasses);
* every problem (an unknown key, a value of the wrong type, an unreadable file) raises :class:`RecipeError`
  naming the key or the file.

Supported field types: ``bool``, ``int``, ``float``, ``str``, ``Literal[...]``, ``list[T]`` (a comma-separated
string is split), optional/union types, and nested dataclasses (a mapping). Only the standard library and PyYAML
are used.
"""

from __future__ import annotations

import dataclasses
import logging
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

__all__ = ["RecipeError", "load_recipe", "parse_overrides"]

log = logging.getLogger(__name__)

T = TypeVar("T")


class RecipeError(ValueError):
    """A recipe file or override is invalid (unknown key, bad value); the message says which."""


def _convert(value: object, tp: Any, key: str) -> Any:
    """Check/convert ``value`` (from YAML or an override string parsed as YAML) to the annotated type ``tp``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _convert(value, arg, key)
            except RecipeError:
                continue
        raise RecipeError(f"{key}: {value!r} is not a valid {tp}")
    if origin is typing.Literal:
        allowed = typing.get_args(tp)
        if any(type(value) is type(a) and value == a for a in allowed):
            return value
        raise RecipeError(f"{key}: expected one of {', '.join(map(str, allowed))}, got {value!r}")
    if origin is list:
        (item,) = typing.get_args(tp)
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise RecipeError(f"{key}: expected a list, got {value!r}")
        return [_convert(v, item, key) for v in value]
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise RecipeError(f"{key}: expected a mapping, got {value!r}")
        return _build(tp, value, prefix=f"{key}.")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise RecipeError(f"{key}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise RecipeError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise RecipeError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise RecipeError(f"{key}: expected a string, got {value!r}")
    raise RecipeError(f"{key}: unsupported type {tp}")  # pragma: no cover - a programming error


def _build(cls: type[Any], data: Mapping[str, object], prefix: str = "") -> Any:
    """``cls(**data)`` with every value converted to its field's type; unknown keys are named in the error."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - names)
    if unknown:
        raise RecipeError(
            f"unknown recipe key(s) {', '.join(prefix + k for k in unknown)}; "
            f"known: {', '.join(prefix + n for n in sorted(names))}"
        )
    kwargs = {k: _convert(v, hints[k], prefix + k) for k, v in data.items()}
    return cls(**kwargs)


def parse_overrides(overrides: Sequence[str]) -> dict[str, Any]:
    """``["a=1", "dataset.path=x.jsonl"]`` → nested dict; values are parsed as YAML scalars/flow collections."""
    out: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise RecipeError(f"override {item!r} is not key=value")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        parts = key.split(".")
        node = out
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise RecipeError(f"override {item!r} conflicts with another override of {part}")
            node = child
        node[parts[-1]] = value
    return out


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``extra`` laid over it; nested mappings are merged key by key, anything else replaced."""
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = _merge(dict(out[k]), v)
        else:
            out[k] = v
    return out


def load_recipe(cls: type[T], path: str | Path | None = None, overrides: Sequence[str] = ()) -> T:
    """A ``cls`` (any dataclass) from a YAML recipe (optional) plus ``key=value`` overrides (dotted keys reach
    into nested dataclasses). Raises :class:`RecipeError` on an unreadable file, an unknown key or a bad value."""
    if not (dataclasses.is_dataclass(cls) and isinstance(cls, type)):
        raise TypeError(f"load_recipe needs a dataclass, got {cls!r}")
    data: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise RecipeError(f"cannot read recipe {path}: {exc}") from exc
        except yaml.YAMLError as exc:
            raise RecipeError(f"recipe {path} is not valid YAML: {exc}") from exc
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise RecipeError(f"recipe {path}: expected a mapping at the top level")
        data = loaded
    data = _merge(data, parse_overrides(overrides))
    log.debug("recipe %s from %s: %s", cls.__name__, path, data)
    result: T = _build(cls, data)
    return result
