"""Models for training: the Hugging Face directory of a recipe's ``model`` (an HF directory, a GGUF file or
``builtin:NAME``, via :func:`models.local.source.resolve_source`), its tokenizer (pad token set), a causal LM in
the recipe's dtype, and the peft LoRA config (None: full fine-tuning).

torch, transformers and peft are imported inside the functions, so importing this module stays cheap.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from core.recipe import RecipeError
from train.config import TrainConfig


def torch_dtype(config: TrainConfig) -> Any:
    import torch

    if config.dtype == "auto":
        return torch.bfloat16 if torch.cuda.is_available() else torch.float32
    table = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    if config.dtype not in table:
        raise RecipeError(f"dtype must be auto, bf16, fp16 or fp32, got {config.dtype!r}")
    return table[config.dtype]


def model_dir(config: TrainConfig) -> Path:
    """The Hugging Face directory of ``config.model`` (a GGUF or built-in model is converted once and cached)."""
    from models.local.source import resolve_source

    return resolve_source(config.model, cache_dir=config.cache_dir).path


def load_causal_lm(config: TrainConfig) -> tuple[Any, Any, Path]:
    """(model, tokenizer, base directory) for causal-LM training."""
    from transformers import AutoModelForCausalLM

    path = model_dir(config)
    from models.reward import load_tokenizer

    tokenizer = load_tokenizer(path)
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch_dtype(config))
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer, path


def peft_config(config: TrainConfig, task_type: str = "CAUSAL_LM") -> Any:
    """A peft ``LoraConfig`` from the recipe, or None for full fine-tuning."""
    if not config.lora:
        return None
    from peft import LoraConfig

    return LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=list(config.lora_target_modules),
        task_type=task_type,
    )
