"""Small data for the train/ tests: preference pairs in the tiny tokenizer's vocabulary, JSONL writing, and a
tiny LoRA reward model trained on them."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "hello", "world", "tiny", "engine"]


def write_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> Path:
    """Write ``rows`` one JSON object per line; returns ``path``."""
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def preference_pairs(n: int, prompt_words: int = 3, words: Sequence[str] = WORDS) -> list[dict[str, Any]]:
    """``n`` conversational pairs: a distinct prompt each, one fixed chosen answer, a varying rejected one."""
    rows = []
    for i in range(n):
        prompt = " ".join(words[(i + j) % len(words)] for j in range(prompt_words))
        rows.append(
            {
                "prompt": [{"role": "user", "content": f"{prompt} {i}"}],
                "chosen": [{"role": "assistant", "content": "a helpful answer keeps the text"}],
                "rejected": [{"role": "assistant", "content": f"the lazy dog {words[i % len(words)]}"}],
            }
        )
    return rows


def train_tiny_reward_adapter(model: Path, prefs: Path, out: Path) -> Path:
    """Two `train rm` steps of a LoRA reward model (adapter + score head) on ``prefs``; returns the adapter."""
    from core.recipe import load_recipe
    from train import rm

    overrides = [f"model={model}", f"output_dir={out}", f"dataset.path={prefs}", "max_steps=2", "max_length=48"]
    overrides += ["eval_share=0", "lora_r=4", "lora_alpha=8", "report_to=[]", "disable_tqdm=true", "save_steps=2"]
    return Path(rm.main(load_recipe(rm.RMRecipe, None, overrides))["adapter"])
