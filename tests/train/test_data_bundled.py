"""Smoke test over the full datasets bundled in train/datasets/: row counts, skips, and what builders make of them."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from train.data.builders import (
    aligner_triplets,
    bpo_word_ratio_ok,
    preference_to_kto,
    preferences_from_bpo,
    rewriter_pairs,
    train_eval_split,
)
from train.data.bundled import (
    ALPACA_EVAL_PREFS,
    BPO_TEST,
    BPO_TRAIN_VAL,
    DATASETS_DIR,
    DOLLY_EVAL,
    HH_RLHF_HARMLESS,
)
from train.data.loaders import load_any


def test_bundled_files_and_licences_are_present() -> None:
    for folder in ("hh-rlhf-harmless", "alpaca-eval-prefs", "bpo"):
        assert (DATASETS_DIR / folder / "LICENSE").is_file()
    assert (DATASETS_DIR / "README.md").is_file()


def test_hh_rlhf_harmless_loads_with_known_skips() -> None:
    loaded = load_any(HH_RLHF_HARMLESS)
    print(f"\n{loaded.summary()}")
    assert loaded.kind == "hh-rlhf" and loaded.read == 1734
    # 3 pairs whose chosen final answer is empty; 2 whose transcripts diverge before the last Assistant turn
    # (one has an inline "Human:" that swallowed a turn, one rejected transcript is a longer conversation).
    assert dict(loaded.skipped) == {"empty_final_answer": 3, "prefix_mismatch": 2}
    assert len(loaded) == 1734 - 5
    assert all(r["prompt"][-1]["role"] == "user" for r in loaded)
    turns = Counter(len(r["prompt"]) for r in loaded)
    assert turns[1] > 400 and sum(n for k, n in turns.items() if k > 1) > 1000


def test_alpaca_eval_prefs_load_completely() -> None:
    loaded = load_any(ALPACA_EVAL_PREFS)
    assert (loaded.kind, loaded.read, len(loaded), loaded.n_skipped) == ("preferences", 1577, 1577, 0)


def test_bpo_and_dolly_load_completely() -> None:
    bpo = load_any(BPO_TEST)
    assert (bpo.kind, len(bpo)) == ("bpo", 200)
    assert sum(bpo_word_ratio_ok(r["prompt"], r.get("optimized_prompt", "")) for r in bpo) == 194
    assert len(rewriter_pairs(bpo.rows)) == 200 and len(rewriter_pairs(bpo.rows, ratio_filter=True)) == 194
    dolly = load_any(DOLLY_EVAL)
    assert (dolly.kind, len(dolly)) == ("dolly", 200)
    assert sum(bool(r["context"]) for r in dolly) == 63


def test_bpo_training_rows_load_and_share_no_prompt_with_the_test_or_evaluation_sets() -> None:
    rows = load_any(BPO_TRAIN_VAL)
    assert (rows.kind, len(rows), rows.n_skipped) == ("bpo", 300, 0)
    # 44 rows carry a context, joined under the instruction as BPO does (the same layout as Dolly's prompts)
    forward = next(r for r in rows if r["prompt"].startswith("Forward this email to"))
    assert forward["prompt"].split("\n")[1] == "Dear Anne,"
    assert sum(bpo_word_ratio_ok(r["prompt"], r.get("optimized_prompt", "")) for r in rows) == 273
    assert len(preferences_from_bpo(rows.rows)) == 298  # 2 rows have an empty bad_res

    def norm(text: str) -> str:
        return " ".join(text.split()).lower()

    prompts = {norm(r["prompt"]) for r in rows}
    assert not prompts & {norm(r["prompt"]) for r in load_any(BPO_TEST)}
    eval_sets = Path(__file__).resolve().parents[2] / "gateway" / "eval" / "prompts"
    for name in ("dolly-eval", "hh-rlhf-harmless"):
        with (eval_sets / name / "prompts.jsonl").open() as f:
            held_out = {norm(json.loads(line)["prompt"]) for line in f}
        assert not prompts & held_out, name


def test_builders_on_the_full_hh_file() -> None:
    prefs = load_any(HH_RLHF_HARMLESS).rows
    triplets = aligner_triplets(prefs)
    copies = sum(t["answer"] == t["correction"] for t in triplets)
    assert len(triplets) - copies == 1729 and abs(copies / len(triplets) - 0.2) < 1e-3
    train, held = train_eval_split(prefs, 0.1, seed=0)
    assert 0.08 < len(held) / len(prefs) < 0.12
    assert len(preference_to_kto(train)) == 2 * len(train)
