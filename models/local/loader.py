"""Load a resolved model source into torch: the causal LM (fp32 on the CPU, bf16 on a CUDA GPU by default), its
tokenizer and an optional LoRA (merged into the weights).

Also reads what generation needs from them once (``generation_limits``, shared with the CTranslate2
runtime): the EOS ids (generation config and tokenizer), a pad id and the context length. Blocking; the
engine calls it from a thread in ``start()``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from models.local.source import ModelSourceError, ResolvedSource, adapter_dir, resolve_source

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
#: Where the engine runs: ``auto`` is CUDA when torch sees a GPU, else the CPU.
DEVICES = ("auto", "cpu", "cuda")


def resolve_device(device: str) -> torch.device:
    """The torch device for the ``device`` setting (``auto``: the first CUDA GPU when there is one)."""
    if device not in DEVICES:
        raise ModelSourceError(f"device must be one of {', '.join(DEVICES)}, not {device!r}")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelSourceError("device cuda: torch sees no CUDA GPU (no GPU, or a CPU-only build of torch)")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """The weights' type for the ``dtype`` setting (``auto``: float32 on the CPU, where it is the fast choice;
    bfloat16 on a GPU)."""
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in _DTYPES:
        raise ModelSourceError(f"dtype must be one of auto, {', '.join(_DTYPES)}, not {dtype!r}")
    return _DTYPES[dtype]


@dataclass(frozen=True, slots=True)
class LoadedModel:
    """Everything generation needs, loaded once."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    source: ResolvedSource
    eos_token_ids: frozenset[int]
    pad_token_id: int
    #: Positions the model can attend over (prompt + completion).
    max_positions: int
    adapter: Path | None


def _int_ids(value: object) -> set[int]:
    if isinstance(value, int):
        return {value}
    if isinstance(value, (list, tuple, set, frozenset)):
        return {item for item in value if isinstance(item, int)}
    return set()


def generation_limits(
    config: PretrainedConfig, generation_config: object, tokenizer: PreTrainedTokenizerBase, where: str
) -> tuple[frozenset[int], int, int]:
    """The EOS ids (generation config and tokenizer), a pad id and the context length of a model."""
    eos = _int_ids(getattr(generation_config, "eos_token_id", None)) | _int_ids(tokenizer.eos_token_id)
    if not eos:
        log.warning("%s defines no EOS token: completions end only at max_tokens or a stop string", where)
    pad = tokenizer.pad_token_id
    if not isinstance(pad, int):
        pad = min(eos) if eos else 0
    text_config = config.get_text_config()
    max_positions = getattr(text_config, "max_position_embeddings", None)
    if not isinstance(max_positions, int) or max_positions <= 0:
        max_positions = 1 << 24
    if any(kind != "full_attention" for kind in getattr(text_config, "layer_types", None) or ()):
        log.warning("%s has non-full attention layers: the local engine treats every layer as full attention", where)
    return frozenset(eos), pad, max_positions


def load_local_model(
    model: str,
    *,
    adapter: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    dtype: str = "auto",
    device: str = "auto",
) -> LoadedModel:
    """Resolve ``model`` (directory, GGUF file or ``builtin:NAME``), load it onto ``device``, merge ``adapter`` if
    any."""
    where = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, where)
    source = resolve_source(model, cache_dir)
    try:
        lm: PreTrainedModel = AutoModelForCausalLM.from_pretrained(str(source.path), dtype=torch_dtype)
        tokenizer = AutoTokenizer.from_pretrained(str(source.path))
    except (OSError, ValueError) as exc:
        raise ModelSourceError(f"cannot load {source.path}: {exc}") from exc
    adapter_path = adapter_dir(adapter)
    if adapter_path is not None:
        lm = _apply_adapter(lm, adapter_path)
    if where.type != "cpu":
        torch.nn.Module.to(lm, where)  # in place (transformers types its own `to` for dtypes only)
    lm.train(False)
    lm.requires_grad_(False)

    eos, pad, max_positions = generation_limits(lm.config, lm.generation_config, tokenizer, str(source.path))
    return LoadedModel(
        model=lm,
        tokenizer=tokenizer,
        source=source,
        eos_token_ids=eos,
        pad_token_id=pad,
        max_positions=max_positions,
        adapter=adapter_path,
    )


def _apply_adapter(lm: PreTrainedModel, adapter: Path) -> PreTrainedModel:
    """Load a peft adapter directory onto ``lm`` and merge it into the weights (no per-step adapter cost).

    Only adapters that merge (LoRA and its kin) fit the engine: prompt-learning adapters change the sequence
    the KV cache holds.
    """
    try:
        from peft import PeftModel
    except ImportError as exc:
        raise ModelSourceError("adapters need the `peft` package: pip install 'aligngate[local]'") from exc
    try:
        peft_model = PeftModel.from_pretrained(lm, str(adapter))
    except (OSError, KeyError, RuntimeError, ValueError) as exc:  # e.g. an adapter trained on another base
        raise ModelSourceError(f"adapter {adapter} does not load onto this model: {exc}") from exc
    try:
        merged = peft_model.merge_and_unload()
    except (AttributeError, NotImplementedError, ValueError) as exc:
        raise ModelSourceError(f"adapter {adapter} cannot be merged into the model: {exc}") from exc
    if not isinstance(merged, PreTrainedModel):
        raise ModelSourceError(f"adapter {adapter} did not merge into a plain model")
    return merged
