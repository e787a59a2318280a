"""Prompt sets: the bundled ones beside this file, and JSONL files.

* A bundled set is ``NAME/prompts.jsonl`` in this folder (its licence beside it; see README.md here).
* A file holds one JSON object per line with ``prompt`` (a string, or a list of chat messages) or ``messages``
  (chat messages; a last assistant message is dropped, so preference or SFT files work as they are), and
  optionally ``id``. A string prompt becomes one user message. Blank lines are skipped; anything else that is
  not such a row is a :class:`PromptError` naming the file and line.
* ``limit`` keeps a sample of that many prompts drawn with ``seed`` (``random.Random(seed).sample``), in file
  order; the same limit and seed always give the same prompts. ``rest: true`` keeps the others instead (a
  development set disjoint from the sample).
* A set with no prompts left is a :class:`PromptError`: an evaluation of nothing is a mistake.
"""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path
from typing import Any

from gateway.eval.config import BUNDLED_SETS, PromptSetSpec
from gateway.eval.records import Criterion, Message, Prompt

__all__ = ["BUNDLED_DIR", "PromptError", "bundled_path", "load_prompt_set", "set_name"]

logger = logging.getLogger(__name__)

BUNDLED_DIR = Path(__file__).resolve().parent


class PromptError(ValueError):
    """A prompt set cannot be read, or is empty; the message names the file and the line."""


def bundled_path(name: str) -> Path:
    return BUNDLED_DIR / name / "prompts.jsonl"


def set_name(spec: PromptSetSpec) -> str:
    return spec.name or spec.bundled or Path(spec.path or "").stem


def _messages(value: Any, where: str) -> tuple[Message, ...]:
    if isinstance(value, str):
        if not value.strip():
            raise PromptError(f"{where}: empty prompt")
        return (Message("user", value),)
    if not isinstance(value, list) or not value:
        raise PromptError(f"{where}: `prompt`/`messages` must be a string or a non-empty list of chat messages")
    out: list[Message] = []
    for m in value:
        if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
            raise PromptError(f"{where}: each message needs a string `role` and a string `content`")
        out.append(Message(m["role"], m["content"]))
    if out[-1].role == "assistant":
        out.pop()
    if not out or not any(m.role == "user" for m in out):
        raise PromptError(f"{where}: no user message")
    return tuple(out)


def _read(path: Path, name: str, criterion: Criterion) -> list[Prompt]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PromptError(f"cannot read prompt set {path}: {exc.strerror or exc}") from None
    prompts: list[Prompt] = []
    ids: set[str] = set()
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path} line {number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise PromptError(f"{where}: not JSON ({exc.msg})") from None
        if not isinstance(row, dict) or not ("prompt" in row or "messages" in row):
            raise PromptError(f"{where}: expected an object with `prompt` or `messages`")
        messages = _messages(row["prompt"] if "prompt" in row else row["messages"], where)
        pid = str(row["id"]) if row.get("id") is not None else str(number)
        if pid in ids:
            raise PromptError(f"{where}: id {pid!r} appears twice")
        ids.add(pid)
        prompts.append(Prompt(name, pid, messages, criterion))
    return prompts


def load_prompt_set(spec: PromptSetSpec) -> list[Prompt]:
    """The prompts of ``spec`` (limited and sampled); :class:`PromptError` when unreadable or empty."""
    name = set_name(spec)
    criterion_text = spec.criterion or (BUNDLED_SETS[spec.bundled] if spec.bundled else "helpful")
    criterion: Criterion = "harmless" if criterion_text == "harmless" else "helpful"
    path = bundled_path(spec.bundled) if spec.bundled is not None else Path(spec.path or "").expanduser()
    prompts = _read(path, name, criterion)
    if spec.limit is not None and spec.limit < len(prompts):
        keep = set(random.Random(spec.seed).sample(range(len(prompts)), spec.limit))
        prompts = [p for i, p in enumerate(prompts) if (i in keep) != spec.rest]
    elif spec.rest:
        prompts = []
    if not prompts:
        raise PromptError(f"prompt set {name!r} ({path}) has no prompts")
    logger.info("prompt set %s: %d prompts (%s)", name, len(prompts), criterion)
    return prompts
