"""Builders: turn loaded records into the training sets of each trainer, and split them deterministically.

* Aligner: :func:`aligner_triplets` (preference pairs → question + rejected → chosen, plus identity "copy"
  pairs, Aligner's warm-up), :func:`aligner_sft` (→ prompt-completion rows in an Aligner template).
* Rewriter (BPO): :func:`rewriter_pairs`, :func:`rewriter_sft`, and :func:`bpo_word_ratio_ok`, BPO's filter.
* Base model: :func:`sft_from_preferences` (prompt → chosen), :func:`preference_to_kto` (KTO rows),
  :func:`sft_from_dolly`; :func:`preferences_from_bpo` (good/bad responses as a preference pair).
* :func:`train_eval_split`: a hash of a stable key per row (its prompt), so a row lands on the same side
  whatever the order or the other rows, and rows sharing a prompt never straddle the split.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TypeVar, cast

from train.data.formats import (
    AlignerTriplet,
    BPORow,
    DollyRow,
    PreferenceRecord,
    PromptCompletionRecord,
    RewriterPair,
    UnpairedRecord,
    assistant,
    completion_text,
    instruction_prompt,
    render_conversation,
    user,
)
from train.data.templates import ALIGNER_TEMPLATES, REWRITER_TEMPLATES, render_aligner_prompt, render_rewriter_prompt

__all__ = [
    "BPO_MAX_RATIO",
    "BPO_MIN_RATIO",
    "add_identity_pairs",
    "aligner_sft",
    "aligner_triplets",
    "bpo_word_ratio_ok",
    "dolly_prompt",
    "n_identity_pairs",
    "preference_to_kto",
    "preferences_from_bpo",
    "rewriter_pairs",
    "rewriter_sft",
    "sft_from_dolly",
    "sft_from_preferences",
    "split_key",
    "train_eval_split",
]

T = TypeVar("T")

# BPO (src/data_construction/process_optimized_prompts.py) drops a constructed pair when the original has more
# than twice the optimized prompt's words, or the optimized prompt more than six times the original's.
BPO_MIN_RATIO = 0.5
BPO_MAX_RATIO = 6.0


# ---------------------------------------------------------------------------------------------------------------
# Aligner


def n_identity_pairs(n_corrections: int, copy_share: float) -> int:
    """How many identity pairs make ``copy_share`` of the output next to ``n_corrections`` correction pairs.

    ``c / (n + c) = share`` → ``c = round(share * n / (1 - share))``; a share of 1 means one copy per
    correction and no corrections (see :func:`add_identity_pairs`).
    """
    if not 0.0 <= copy_share <= 1.0:
        raise ValueError(f"copy_share must be within [0, 1], got {copy_share}")
    if copy_share == 1.0:
        return n_corrections
    return round(copy_share * n_corrections / (1.0 - copy_share))


def add_identity_pairs(
    triplets: Sequence[AlignerTriplet], copy_share: float = 0.2, seed: int = 0, shuffle: bool = True
) -> list[AlignerTriplet]:
    """Mix identity pairs (``answer = correction``) into correction triplets so they are ``copy_share`` of the output.

    The copied rows are drawn without replacement by ``seed`` (cycling through fresh permutations when more
    copies than rows are needed, i.e. a share above 0.5). ``copy_share=0`` returns the triplets; ``copy_share=1``
    returns only identity pairs, one per triplet. With ``shuffle`` the output is shuffled by ``seed``, else the
    corrections come first, then the copies. Identity pairs are recognisable by ``answer == correction``.
    """
    n = len(triplets)
    c = n_identity_pairs(n, copy_share)
    rng = random.Random(seed)
    picks: list[int] = []
    while len(picks) < c:
        need = c - len(picks)
        picks.extend(rng.sample(range(n), need) if need <= n else rng.sample(range(n), n))
    copies: list[AlignerTriplet] = []
    for i in picks:
        question, correction = triplets[i]["question"], triplets[i]["correction"]
        copies.append({"question": question, "answer": correction, "correction": correction})
    out = copies if copy_share == 1.0 else [*triplets, *copies]
    if shuffle:
        rng.shuffle(out)
    return out


def aligner_triplets(
    prefs: Iterable[PreferenceRecord], copy_share: float = 0.2, seed: int = 0, shuffle: bool = True
) -> list[AlignerTriplet]:
    """Aligner training triplets from preference pairs.

    Each pair gives ``{question: prompt as text, answer: rejected, correction: chosen}`` (a multi-turn prompt is
    flattened by :func:`~train.data.formats.render_conversation`); then identity pairs ``answer = correction =
    chosen`` are added so that they make up ``copy_share`` of the output (see :func:`add_identity_pairs`).
    """
    corrections: list[AlignerTriplet] = [
        {
            "question": render_conversation(p["prompt"]),
            "answer": completion_text(p["rejected"]),
            "correction": completion_text(p["chosen"]),
        }
        for p in prefs
    ]
    return add_identity_pairs(corrections, copy_share=copy_share, seed=seed, shuffle=shuffle)


def aligner_sft(triplets: Iterable[AlignerTriplet], template: str = "aligner-v1") -> list[PromptCompletionRecord]:
    """Prompt-completion rows for Aligner SFT: the template filled with question and answer → the correction.

    Text templates (``aligner-v1``, ``aligner-v2``) give standard rows (strings); ``aligner-chat`` gives
    conversational rows (one user message → one assistant message).
    """
    t = ALIGNER_TEMPLATES.get(template)
    if t is None:
        raise ValueError(f"unknown aligner template {template!r}; expected one of {', '.join(ALIGNER_TEMPLATES)}")
    rows: list[PromptCompletionRecord] = []
    for tr in triplets:
        prompt = render_aligner_prompt(template, tr["question"], tr["answer"])
        if t.style == "text":
            rows.append({"prompt": prompt, "completion": t.completion_prefix + tr["correction"]})
        else:
            rows.append({"prompt": prompt, "completion": [assistant(tr["correction"])]})
    return rows


# ---------------------------------------------------------------------------------------------------------------
# Rewriter (BPO)


def bpo_word_ratio_ok(
    original: str, optimized: str, min_ratio: float = BPO_MIN_RATIO, max_ratio: float = BPO_MAX_RATIO
) -> bool:
    """BPO's filter: keep when the optimized prompt is non-empty and has 0.5 to 6 times the original's words.

    Words are whitespace-separated tokens (``str.split()``); both bounds are inclusive, as in BPO, which drops a
    pair only when a ratio is strictly above its limit. An original with no words never passes.
    """
    n_original = len(original.split())
    n_optimized = len(optimized.split())
    if n_original == 0 or n_optimized == 0:
        return False
    return min_ratio * n_original <= n_optimized <= max_ratio * n_original


def rewriter_pairs(bpo_rows: Iterable[BPORow], ratio_filter: bool = False) -> list[RewriterPair]:
    """``{prompt, optimized_prompt}`` pairs from BPO rows that have an optimized prompt.

    Rows without one, or with an empty one, are left out; with ``ratio_filter`` so are rows failing
    :func:`bpo_word_ratio_ok` (off by default: published BPO data was filtered when it was built).
    """
    pairs: list[RewriterPair] = []
    for row in bpo_rows:
        optimized = row.get("optimized_prompt", "").strip()
        if not optimized or (ratio_filter and not bpo_word_ratio_ok(row["prompt"], optimized)):
            continue
        pairs.append({"prompt": row["prompt"], "optimized_prompt": optimized})
    return pairs


def rewriter_sft(pairs: Iterable[RewriterPair], template: str = "bpo") -> list[PromptCompletionRecord]:
    """Prompt-completion rows for rewriter SFT: the template filled with the prompt → the optimized prompt.

    ``bpo`` gives standard rows whose prompt is exactly BPO's template and whose completion is ``" " +
    optimized_prompt`` (Llama-2-chat's ``[/INST] answer`` spacing); ``bpo-chat`` gives conversational rows.
    """
    t = REWRITER_TEMPLATES.get(template)
    if t is None:
        raise ValueError(f"unknown rewriter template {template!r}; expected one of {', '.join(REWRITER_TEMPLATES)}")
    rows: list[PromptCompletionRecord] = []
    for pair in pairs:
        prompt = render_rewriter_prompt(template, pair["prompt"])
        if t.style == "text":
            rows.append({"prompt": prompt, "completion": t.completion_prefix + pair["optimized_prompt"]})
        else:
            rows.append({"prompt": prompt, "completion": [assistant(pair["optimized_prompt"])]})
    return rows


def preferences_from_bpo(bpo_rows: Iterable[BPORow]) -> list[PreferenceRecord]:
    """Preference pairs from BPO rows that have both responses: prompt → good_res (chosen) / bad_res (rejected)."""
    prefs: list[PreferenceRecord] = []
    for row in bpo_rows:
        good, bad = row.get("good_res", "").strip(), row.get("bad_res", "").strip()
        if good and bad and good != bad:
            prefs.append({"prompt": [user(row["prompt"])], "chosen": [assistant(good)], "rejected": [assistant(bad)]})
    return prefs


# ---------------------------------------------------------------------------------------------------------------
# Base-model SFT and KTO


def sft_from_preferences(prefs: Iterable[PreferenceRecord]) -> list[PromptCompletionRecord]:
    """Conversational prompt-completion rows: each preference's prompt → its chosen response."""
    return [{"prompt": p["prompt"], "completion": p["chosen"]} for p in prefs]


def preference_to_kto(prefs: Iterable[PreferenceRecord]) -> list[UnpairedRecord]:
    """KTO (unpaired preference) rows: for each pair, chosen with ``label=True`` then rejected with ``label=False``."""
    rows: list[UnpairedRecord] = []
    for p in prefs:
        rows.append({"prompt": p["prompt"], "completion": p["chosen"], "label": True})
        rows.append({"prompt": p["prompt"], "completion": p["rejected"], "label": False})
    return rows


def dolly_prompt(row: DollyRow) -> str:
    """The prompt a Dolly row stands for: the instruction, then its context on the next line when it has one.

    This is BPO's ``{instruction}\\n{context}`` layout (:func:`~train.data.formats.instruction_prompt`).
    """
    return instruction_prompt(row["instruction"], row["context"])


def sft_from_dolly(rows: Iterable[DollyRow]) -> list[PromptCompletionRecord]:
    """Conversational prompt-completion rows: the Dolly prompt → its reference response."""
    return [{"prompt": [user(dolly_prompt(r))], "completion": [assistant(r["response"].strip())]} for r in rows]


# ---------------------------------------------------------------------------------------------------------------
# Splitting

_SPLIT_FIELDS = ("prompt", "question", "instruction")


def split_key(row: Mapping[str, object]) -> str:
    """The stable key a row is split by: its prompt (``prompt``, ``question``, ``instruction`` + ``context``, or a
    ``messages`` conversation without its last turn), else the whole row, as canonical JSON.

    Keying on the prompt keeps every row built from one prompt (a KTO pair, an Aligner correction and its copy,
    two preference pairs for the same question) on the same side of a split.
    """
    key: object = dict(row)
    for name in _SPLIT_FIELDS:
        if name in row:
            key = [row[name], row.get("context", "")] if name == "instruction" else row[name]
            break
    else:
        messages = row.get("messages")
        if isinstance(messages, list) and messages:
            key = messages[:-1]
    return json.dumps(key, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def _bucket(key: str, seed: int) -> float:
    digest = hashlib.sha256(f"{seed}\x00{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def train_eval_split(
    rows: Iterable[T], eval_share: float, seed: int = 0, key: Callable[[T], str] | None = None
) -> tuple[list[T], list[T]]:
    """Split rows into ``(train, eval)``: a row goes to eval when a hash of ``(seed, key(row))`` falls below
    ``eval_share``.

    Deterministic, and independent of order and of the other rows (a row always lands on the same side), so
    the eval share is approximate (binomial) rather than exact. Input order is kept within each side.
    ``key`` defaults to :func:`split_key` (the row's prompt; rows are then mappings).
    """
    if not 0.0 <= eval_share <= 1.0:
        raise ValueError(f"eval_share must be within [0, 1], got {eval_share}")

    def key_fn(row: T) -> str:
        return key(row) if key is not None else split_key(cast("Mapping[str, object]", row))

    train: list[T] = []
    held_out: list[T] = []
    for row in rows:
        (held_out if _bucket(key_fn(row), seed) < eval_share else train).append(row)
    return train, held_out
