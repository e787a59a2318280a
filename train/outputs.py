"""What a finished training run writes under ``output_dir``: ``final/`` (a peft adapter with LoRA, else the full
model, plus the tokenizer), with ``merge`` and LoRA also ``merged/`` (base + adapter merged, a plain Hugging Face
directory for vLLM), and ``aligngate-train.json`` (the base directory, the recipe's ``model`` and what was
written). The TRL methods save through :func:`save_outputs`, PPO through :func:`write_outputs`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from train.config import TrainConfig


def save_outputs(trainer: Any, tokenizer: Any, config: TrainConfig, base: Path) -> dict[str, str]:
    """Save a TRL trainer's model (:func:`write_outputs`; ``trainer.save_model`` handles sharded runs)."""
    return write_outputs(trainer.save_model, trainer.model, tokenizer, config, base, lora=config.lora)


def write_outputs(
    save: Callable[[str], None], model: Any, tokenizer: Any, config: TrainConfig, base: Path, lora: bool
) -> dict[str, str]:
    """Write ``output_dir/final`` with ``save`` (a peft adapter with LoRA, the full model otherwise) plus the
    tokenizer; with ``merge`` and LoRA also ``output_dir/merged`` (base + adapter, a plain HF directory); and
    ``aligngate-train.json``. Returns what was written."""
    out = Path(config.output_dir)
    final = out / "final"
    save(str(final))
    tokenizer.save_pretrained(str(final))
    written = {"adapter" if lora else "model": str(final)}
    if config.merge and lora:
        merged_dir = out / "merged"
        merged = model.merge_and_unload()
        merged.save_pretrained(str(merged_dir))
        tokenizer.save_pretrained(str(merged_dir))
        written["merged"] = str(merged_dir)
    (out / "aligngate-train.json").write_text(
        json.dumps({"base": str(base), "model": config.model, **written}, indent=2), encoding="utf-8"
    )
    return written
