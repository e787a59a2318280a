"""Paths of the public datasets bundled in ``train/datasets/`` (see its README.md for sources and licences)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["ALPACA_EVAL_PREFS", "BPO_TEST", "BPO_TRAIN_VAL", "DATASETS_DIR", "DOLLY_EVAL", "HH_RLHF_HARMLESS"]

# train/data/bundled.py → train/datasets/ (shipped as package data of `train`, so it resolves when installed too).
DATASETS_DIR = Path(__file__).resolve().parent.parent / "datasets"

HH_RLHF_HARMLESS = DATASETS_DIR / "hh-rlhf-harmless" / "pairs.jsonl"
"""1,734 Anthropic HH-RLHF harmless-base raw transcript pairs (kind ``hh-rlhf``; MIT)."""

ALPACA_EVAL_PREFS = DATASETS_DIR / "alpaca-eval-prefs" / "pairs.jsonl"
"""1,577 AlpacaEval GPT-4-Turbo-judged helpfulness preferences (kind ``preferences``; Apache-2.0)."""

BPO_TEST = DATASETS_DIR / "bpo" / "bpo_test.json"
"""200 BPO test rows with prompt, optimized prompt, good and bad response (kind ``bpo``; Apache-2.0)."""

BPO_TRAIN_VAL = DATASETS_DIR / "bpo" / "bpo_train_val.json"
"""300 rows of BPO's training-data validation split: instruction (+ context), optimized prompt, good and bad
response (kind ``bpo``; Apache-2.0); no prompt in common with ``BPO_TEST`` or the HH-RLHF test split."""

DOLLY_EVAL = DATASETS_DIR / "bpo" / "dolly_eval.json"
"""200 Dolly evaluation instructions (kind ``dolly``; CC BY-SA 3.0)."""
