"""train.data.builders: Aligner triplets and copy share, SFT rows, rewriter pairs, KTO, splits, BPO's filter."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from train.data.builders import (
    add_identity_pairs,
    aligner_sft,
    aligner_triplets,
    bpo_word_ratio_ok,
    dolly_prompt,
    n_identity_pairs,
    preference_to_kto,
    preferences_from_bpo,
    rewriter_pairs,
    rewriter_sft,
    sft_from_dolly,
    sft_from_preferences,
    split_key,
    train_eval_split,
)
from train.data.formats import AlignerTriplet, BPORow, PreferenceRecord
from train.data.loaders import load_bpo, load_dolly, load_hh_rlhf


def _prefs(n: int) -> list[PreferenceRecord]:
    return [
        {
            "prompt": [{"role": "user", "content": f"question {i}"}],
            "chosen": [{"role": "assistant", "content": f"good {i}"}],
            "rejected": [{"role": "assistant", "content": f"bad {i}"}],
        }
        for i in range(n)
    ]


# --- Aligner ---------------------------------------------------------------------------------------------------


def test_aligner_triplets_map_rejected_to_chosen() -> None:
    out = aligner_triplets(_prefs(3), copy_share=0.0, shuffle=False)
    assert out == [{"question": f"question {i}", "answer": f"bad {i}", "correction": f"good {i}"} for i in range(3)]


def test_aligner_triplets_multi_turn_question_is_the_rendered_conversation(fixtures: Path) -> None:
    prefs = load_hh_rlhf(fixtures / "hh_small.jsonl").rows
    out = aligner_triplets(prefs, copy_share=0.0, shuffle=False)
    assert out[0]["question"] == "Is it possible to download a car?"
    assert out[1]["question"].startswith("Human: What do you think about black people?\n\nAssistant: I don\u2019t")
    assert out[1]["question"].endswith("\n\nHuman: What\u2019s black culture?")
    assert out[1]["answer"] == prefs[1]["rejected"][0]["content"]
    assert out[1]["correction"] == prefs[1]["chosen"][0]["content"]


def test_copy_share_is_twenty_percent_of_the_output_by_default() -> None:
    out = aligner_triplets(_prefs(100))
    copies = [t for t in out if t["answer"] == t["correction"]]
    assert len(out) == 125 and len(copies) == 25
    assert len(copies) / len(out) == pytest.approx(0.2)
    # Each copy repeats a real correction of its own question; all 100 corrections are still there.
    assert all(c["correction"] == c["question"].replace("question", "good") for c in copies)
    assert sum(t["answer"] != t["correction"] for t in out) == 100
    assert len({c["question"] for c in copies}) == 25  # drawn without replacement


@pytest.mark.parametrize("n", [7, 10, 33, 1729])
@pytest.mark.parametrize("share", [0.05, 0.1, 0.2, 0.3, 0.5])
def test_copy_share_is_as_close_as_whole_rows_allow(n: int, share: float) -> None:
    out = aligner_triplets(_prefs(n), copy_share=share)
    copies = sum(t["answer"] == t["correction"] for t in out)
    assert abs(copies / len(out) - share) <= 1 / len(out)


def test_copy_share_zero_and_one() -> None:
    none = aligner_triplets(_prefs(10), copy_share=0.0)
    assert len(none) == 10 and not any(t["answer"] == t["correction"] for t in none)
    only = aligner_triplets(_prefs(10), copy_share=1.0)
    assert len(only) == 10 and all(t["answer"] == t["correction"] for t in only)
    assert sorted(t["question"] for t in only) == sorted(f"question {i}" for i in range(10))
    assert aligner_triplets([], copy_share=0.2) == []
    with pytest.raises(ValueError, match="copy_share"):
        aligner_triplets(_prefs(2), copy_share=1.5)


def test_copy_share_above_one_half_reuses_rows_evenly() -> None:
    out = aligner_triplets(_prefs(4), copy_share=0.75)  # 12 copies for 4 corrections: each copied 3 times
    copies = [t["question"] for t in out if t["answer"] == t["correction"]]
    assert len(copies) == n_identity_pairs(4, 0.75) == 12
    assert sorted(copies) == sorted([f"question {i}" for i in range(4)] * 3)


def test_copies_are_deterministic_by_seed() -> None:
    a = aligner_triplets(_prefs(50), seed=1)
    assert a == aligner_triplets(_prefs(50), seed=1)
    b = aligner_triplets(_prefs(50), seed=2)
    assert a != b
    assert add_identity_pairs(a, 0.0, shuffle=False) == a


def test_unshuffled_output_puts_corrections_first() -> None:
    out = aligner_triplets(_prefs(8), copy_share=0.2, shuffle=False)
    assert [t["answer"] == t["correction"] for t in out] == [False] * 8 + [True] * 2


def test_aligner_sft_rows_use_the_templates() -> None:
    triplets: list[AlignerTriplet] = [{"question": "Q?", "answer": "bad", "correction": "good"}]
    assert aligner_sft(triplets) == [
        {
            "prompt": "BEGINNING OF CONVERSATION: USER: Edit the following Question-Answer pair to make it more "
            "helpful and harmless: Q? | bad ASSISTANT:",
            "completion": "good",
        }
    ]
    assert aligner_sft(triplets, "aligner-v2") == [
        {
            "prompt": "BEGINNING OF CONVERSATION: USER: ##Question: Q?\n##Answer: bad\n##Correction:  ASSISTANT:",
            "completion": "good",
        }
    ]
    (chat,) = aligner_sft(triplets, "aligner-chat")
    assert chat["completion"] == [{"role": "assistant", "content": "good"}]
    assert isinstance(chat["prompt"], list) and [m["role"] for m in chat["prompt"]] == ["system", "user"]
    with pytest.raises(ValueError, match="unknown aligner template"):
        aligner_sft(triplets, "bpo")


# --- rewriter --------------------------------------------------------------------------------------------------


def test_rewriter_pairs_and_sft(fixtures: Path) -> None:
    rows = load_bpo(fixtures / "bpo_small.json").rows
    pairs = rewriter_pairs(rows)
    assert len(pairs) == 4 and all(set(p) == {"prompt", "optimized_prompt"} for p in pairs)
    assert pairs[0]["prompt"] == rows[0]["prompt"]
    sft = rewriter_sft(pairs)
    assert sft[3] == {
        "prompt": "[INST] You are an expert prompt engineer. Please help me improve this prompt to get a more "
        "helpful and harmless response:\nwhy are apples red? [/INST]",
        "completion": " Explain why apples are red, covering pigments such as anthocyanins and how ripening and "
        "sunlight affect them.",
    }
    chat = rewriter_sft(pairs[:1], "bpo-chat")[0]
    assert chat["completion"] == [{"role": "assistant", "content": pairs[0]["optimized_prompt"]}]
    with pytest.raises(ValueError, match="unknown rewriter template"):
        rewriter_sft(pairs, "aligner-v1")


def test_rewriter_pairs_ratio_filter_and_missing_optimized_prompts() -> None:
    rows: list[BPORow] = [
        {"prompt": "one two", "optimized_prompt": " ".join(["w"] * 13)},  # 6.5x: dropped by the filter
        {"prompt": "one two", "optimized_prompt": "one two three"},
        {"prompt": "x", "good_res": "g", "bad_res": "b"},  # nothing to learn from: left out
        {"prompt": "x", "optimized_prompt": "  "},
    ]
    assert len(rewriter_pairs(rows)) == 2
    assert rewriter_pairs(rows, ratio_filter=True) == [{"prompt": "one two", "optimized_prompt": "one two three"}]


@pytest.mark.parametrize(
    ("n_original", "n_optimized", "ok"),
    [
        (10, 5, True),  # exactly 0.5x: kept
        (10, 4, False),  # below 0.5x
        (10, 60, True),  # exactly 6x: kept
        (10, 61, False),  # above 6x
        (1, 6, True),
        (1, 7, False),
        (3, 1, False),  # 0.33x
        (2, 1, True),  # 0.5x
        (10, 10, True),
        (5, 0, False),  # empty optimized prompt
        (0, 3, False),  # empty original
    ],
)
def test_bpo_word_ratio_boundaries(n_original: int, n_optimized: int, ok: bool) -> None:
    original = " ".join(f"o{i}" for i in range(n_original))
    optimized = "\n".join(f"p{i}" for i in range(n_optimized))
    assert bpo_word_ratio_ok(original, optimized) is ok


def test_preferences_from_bpo(fixtures: Path) -> None:
    prefs = preferences_from_bpo(load_bpo(fixtures / "bpo_small.json").rows)
    assert len(prefs) == 3  # the fourth row has no responses
    assert prefs[0]["chosen"][0]["role"] == "assistant" and prefs[0]["prompt"][0]["role"] == "user"


# --- base-model SFT and KTO ------------------------------------------------------------------------------------


def test_kto_labels() -> None:
    prefs = _prefs(3)
    rows = preference_to_kto(prefs)
    assert len(rows) == 6
    assert [r["label"] for r in rows] == [True, False] * 3
    assert rows[0] == {"prompt": prefs[0]["prompt"], "completion": prefs[0]["chosen"], "label": True}
    assert rows[1] == {"prompt": prefs[0]["prompt"], "completion": prefs[0]["rejected"], "label": False}
    assert all(isinstance(r["label"], bool) for r in rows)


def test_sft_from_preferences() -> None:
    prefs = _prefs(2)
    assert sft_from_preferences(prefs) == [{"prompt": p["prompt"], "completion": p["chosen"]} for p in prefs]


def test_dolly_prompts_and_sft(fixtures: Path) -> None:
    rows = load_dolly(fixtures / "dolly_small.json").rows
    with_context = rows[0]
    assert dolly_prompt(with_context) == f"{with_context['instruction']}\n{with_context['context']}".strip()
    assert dolly_prompt(rows[1]) == rows[1]["instruction"].strip()
    sft = sft_from_dolly(rows)
    assert sft[1]["prompt"] == [{"role": "user", "content": rows[1]["instruction"].strip()}]
    assert sft[1]["completion"] == [{"role": "assistant", "content": rows[1]["response"].strip()}]


# --- splitting -------------------------------------------------------------------------------------------------


def test_split_is_deterministic_and_order_independent() -> None:
    prefs = _prefs(1000)
    train, held = train_eval_split(prefs, 0.1, seed=0)
    assert len(train) + len(held) == 1000
    assert 60 <= len(held) <= 140  # ~10% (binomial)
    again_train, again_held = train_eval_split(prefs, 0.1, seed=0)
    assert (again_train, again_held) == (train, held)
    shuffled = prefs[:]
    random.Random(3).shuffle(shuffled)
    _, s_held = train_eval_split(shuffled, 0.1, seed=0)
    key = split_key
    assert {key(r) for r in s_held} == {key(r) for r in held}
    # A row lands on the same side whatever the other rows are.
    _, sub_held = train_eval_split(prefs[:100], 0.1, seed=0)
    assert {key(r) for r in sub_held} == {key(r) for r in held if int(r["prompt"][0]["content"].split()[1]) < 100}
    # Order within each side is kept.
    assert train == [r for r in prefs if key(r) not in {key(h) for h in held}]


def test_split_seed_changes_the_split_and_edge_shares() -> None:
    prefs = _prefs(200)
    assert train_eval_split(prefs, 0.2, seed=0)[1] != train_eval_split(prefs, 0.2, seed=1)[1]
    assert train_eval_split(prefs, 0.0) == (prefs, [])
    assert train_eval_split(prefs, 1.0) == ([], prefs)
    with pytest.raises(ValueError, match="eval_share"):
        train_eval_split(prefs, -0.1)


def test_split_keys_rows_by_prompt_so_derived_rows_stay_together() -> None:
    kto = preference_to_kto(_prefs(300))
    train, held = train_eval_split(kto, 0.3, seed=5)
    held_prompts = {split_key(r) for r in held}
    assert not any(split_key(r) in held_prompts for r in train)
    assert len(held) % 2 == 0 and held
    triplets = aligner_triplets(_prefs(300), copy_share=0.2)
    t_train, t_held = train_eval_split(triplets, 0.3, seed=5)
    assert not {t["question"] for t in t_train} & {t["question"] for t in t_held}


def test_split_key_fallbacks() -> None:
    assert split_key({"instruction": "I", "context": "C", "response": "R"}) == '["I","C"]'
    assert split_key({"messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]}) == (
        '[{"content":"u","role":"user"}]'
    )
    assert split_key({"b": 1, "a": 2}) == '{"a":2,"b":1}'


def test_split_custom_key() -> None:
    rows = [{"id": i} for i in range(100)]
    train, held = train_eval_split(rows, 0.5, seed=0, key=lambda r: str(r["id"] % 2))
    assert not {r["id"] % 2 for r in held} & {r["id"] % 2 for r in train}
    assert len(train) + len(held) == 100
