"""train.data.loaders: HH-RLHF transcripts, preference/SFT/KTO rows, BPO, Dolly, gateway exports, sniffing."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from train.data.formats import DataFormatError, read_jsonl
from train.data.loaders import (
    SkipRow,
    load_any,
    load_bpo,
    load_dolly,
    load_gateway_export,
    load_hh_rlhf,
    load_messages_jsonl,
    load_preferences_jsonl,
    load_prompt_completion,
    load_unpaired,
    parse_hh_pair,
    sniff_kind,
)

H = "\n\nHuman: "
A = "\n\nAssistant: "


def _write(path: Path, rows: list[object]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# --- HH-RLHF ---------------------------------------------------------------------------------------------------


def test_hh_multi_turn_becomes_messages_with_the_final_turn_split_off() -> None:
    chosen = H + "How do I bake bread?" + A + "Mix flour and water." + H + "Then what?" + A + " Knead it, then bake. "
    rejected = H + "How do I bake bread?" + A + "Mix flour and water." + H + "Then what?" + A + "Buy some."
    record = parse_hh_pair(chosen, rejected)
    assert record == {
        "prompt": [
            {"role": "user", "content": "How do I bake bread?"},
            {"role": "assistant", "content": "Mix flour and water."},
            {"role": "user", "content": "Then what?"},
        ],
        "chosen": [{"role": "assistant", "content": "Knead it, then bake."}],
        "rejected": [{"role": "assistant", "content": "Buy some."}],
    }


def test_hh_transcript_without_leading_blank_lines_is_accepted() -> None:
    record = parse_hh_pair("Human: Hi" + A + "Hello", "Human: Hi" + A + "Go away")
    assert record["prompt"] == [{"role": "user", "content": "Hi"}]


def test_hh_consecutive_turns_of_one_speaker_are_merged() -> None:
    chosen = H + "Joke?" + A + "Here is one:" + A + "A pun." + H + "Another" + A + "Sure."
    rejected = H + "Joke?" + A + "Here is one:" + A + "A pun." + H + "Another" + A + "No."
    record = parse_hh_pair(chosen, rejected)
    assert [m["role"] for m in record["prompt"]] == ["user", "assistant", "user"]
    assert record["prompt"][1]["content"] == "Here is one:\n\nA pun."


def test_hh_inline_markers_stay_text() -> None:
    chosen = H + "Quote it." + A + "She said: Human: are you there?"
    record = parse_hh_pair(chosen, H + "Quote it." + A + "No.")
    assert record["chosen"][0]["content"] == "She said: Human: are you there?"


@pytest.mark.parametrize(
    ("chosen", "rejected", "reason"),
    [
        ("plain text", "plain text 2", "not_a_transcript"),
        ("Preamble" + H + "Hi" + A + "Yo", "Preamble" + H + "Hi" + A + "No", "text_before_first_turn"),
        (H + "Hi" + A + "Yo" + H + "Why?", H + "Hi" + A + "No" + H + "Why?", "last_turn_not_assistant"),
        (H + "Hi" + A + "Yo", H + "Hello" + A + "No", "prefix_mismatch"),
        (A + "Yo", A + "No", "empty_prompt"),
        (H + "Hi" + A + "One." + A + "Yo", H + "Hi" + A + "One." + A + "No", "prompt_ends_with_assistant"),
        (H + "Hi" + A, H + "Hi" + A + "No", "empty_final_answer"),
        (H + "Hi" + A + "Yo", H + "Hi" + A + " \n ", "empty_final_answer"),
        (H + "Hi" + A + "Same", H + "Hi" + A + "Same ", "identical_responses"),
    ],
)
def test_hh_unusable_pairs_raise_skip_with_a_reason(chosen: str, rejected: str, reason: str) -> None:
    with pytest.raises(SkipRow) as info:
        parse_hh_pair(chosen, rejected)
    assert info.value.reason == reason


def test_load_hh_fixture_counts_and_skip_reasons(fixtures: Path) -> None:
    loaded = load_hh_rlhf(fixtures / "hh_small.jsonl")
    assert loaded.kind == "hh-rlhf"
    assert loaded.read == 10
    assert len(loaded) == 4
    assert dict(loaded.skipped) == {
        "empty_final_answer": 2,
        "prefix_mismatch": 1,
        "last_turn_not_assistant": 1,
        "identical_responses": 1,
        "not_a_transcript": 1,
    }
    assert loaded.skipped_at["empty_final_answer"] == ["line 4", "line 8"]
    assert loaded.n_skipped == 6
    summary = loaded.summary()
    assert "kept 4 of 10" in summary and "prefix_mismatch: 1 (line 5)" in summary
    single, multi, merged, inline = loaded.rows
    assert single["prompt"] == [{"role": "user", "content": "Is it possible to download a car?"}]
    assert [m["role"] for m in multi["prompt"]] == ["user", "assistant", "user", "assistant", "user"]
    assert multi["prompt"][-1]["content"] == "What\u2019s black culture?"
    # Row 3 has "Assistant: ...\n\nAssistant: ..." mid-conversation: merged, roles alternate.
    roles = [m["role"] for m in merged["prompt"]]
    assert all(a != b for a, b in itertools.pairwise(roles)) and roles[-1] == "user"
    assert inline["chosen"][0]["content"].startswith("She said: Human: are you there?")
    for record in loaded:
        assert record["chosen"][0]["role"] == record["rejected"][0]["role"] == "assistant"
        assert record["chosen"] != record["rejected"]


def test_load_hh_shared_prefix_matches_raw_text(fixtures: Path) -> None:
    raw = read_jsonl(fixtures / "hh_small.jsonl")[1]
    record = load_hh_rlhf(fixtures / "hh_small.jsonl")[1]
    chosen = str(raw["chosen"])
    cut = chosen.rfind("\n\nAssistant:")
    assert str(raw["rejected"]).startswith(chosen[:cut])
    rebuilt = "".join(
        ("\n\nHuman: " if m["role"] == "user" else "\n\nAssistant: ") + m["content"] for m in record["prompt"]
    )
    assert rebuilt == chosen[:cut]


def test_load_hh_missing_key_names_file_and_line(tmp_path: Path) -> None:
    f = _write(tmp_path / "hh.jsonl", [{"chosen": H + "a" + A + "b", "rejected": H + "a" + A + "c"}, {"chosen": "x"}])
    with pytest.raises(DataFormatError, match=r"hh\.jsonl:line 2: missing key 'rejected'"):
        load_hh_rlhf(f)
    g = _write(tmp_path / "hh2.jsonl", [{"chosen": 1, "rejected": "x"}])
    with pytest.raises(DataFormatError, match=r"hh2\.jsonl:line 1: 'chosen' must be a string, got int"):
        load_hh_rlhf(g)


# --- preferences, messages, prompt-completion, unpaired ---------------------------------------------------------


def test_load_preferences_fixture(fixtures: Path) -> None:
    loaded = load_preferences_jsonl(fixtures / "prefs_small.jsonl")
    assert (loaded.read, len(loaded)) == (6, 4)
    assert dict(loaded.skipped) == {"empty_response": 1, "identical_responses": 1}
    alpaca, multi, conversational, implicit = loaded.rows
    assert set(alpaca) == {"prompt", "chosen", "rejected"}  # chosen_model etc. dropped
    assert alpaca["prompt"][0]["role"] == "user" and alpaca["prompt"][0]["content"].startswith("Hi, I'm trying")
    assert alpaca["chosen"][0]["role"] == "assistant"
    assert [m["role"] for m in multi["prompt"]] == ["system", "user", "assistant", "user"]
    assert multi["chosen"] == [{"role": "assistant", "content": "3"}]
    assert conversational["rejected"] == [{"role": "assistant", "content": "Lyon."}]
    assert implicit == {
        "prompt": [{"role": "user", "content": "Say hi"}],
        "chosen": [{"role": "assistant", "content": "Hi!"}],
        "rejected": [{"role": "assistant", "content": "No."}],
    }


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"prompt": "p", "chosen": "c"}, "missing key 'rejected'"),
        ({"prompt": 3, "chosen": "c", "rejected": "r"}, "'prompt' must be a non-empty list of messages"),
        ({"prompt": [{"content": "x"}], "chosen": "c", "rejected": "r"}, "prompt[0]: 'role' must be"),
        ({"prompt": "p", "chosen": [{"role": "user", "content": "c"}], "rejected": "r"}, "last message must be"),
        ({"chosen": "c", "rejected": "r"}, "use kind 'hh-rlhf'"),
        ({"prompt": [{"role": "user", "content": [{"type": "image_url"}]}], "chosen": "c", "rejected": "r"}, "text"),
    ],
)
def test_load_preferences_malformed_rows_raise(tmp_path: Path, row: dict[str, object], message: str) -> None:
    f = _write(tmp_path / "p.jsonl", [{"prompt": "ok", "chosen": "a", "rejected": "b"}, row])
    with pytest.raises(DataFormatError) as info:
        load_preferences_jsonl(f)
    assert str(info.value).startswith(f"{f}:line 2: ")
    assert message in str(info.value)


def test_load_messages_fixture(fixtures: Path) -> None:
    loaded = load_messages_jsonl(fixtures / "messages_small.jsonl")
    assert (loaded.read, len(loaded)) == (4, 2)
    assert dict(loaded.skipped) == {"last_not_assistant": 1, "no_prompt": 1}
    first, second = loaded.rows
    assert first == {
        "prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        "completion": [{"role": "assistant", "content": "Hello."}],
    }
    assert isinstance(second["prompt"], list)
    assert [m["content"] for m in second["prompt"]] == ["2+2?", "4", "3+3?"]
    assert second["completion"] == [{"role": "assistant", "content": "6"}]  # content parts joined


def test_load_prompt_completion_and_unpaired(tmp_path: Path) -> None:
    f = _write(
        tmp_path / "pc.jsonl",
        [{"prompt": "Q", "completion": " A"}, {"prompt": [{"role": "user", "content": "Q"}], "completion": ""}],
    )
    loaded = load_prompt_completion(f)
    assert loaded.rows == [{"prompt": "Q", "completion": " A"}] and dict(loaded.skipped) == {"empty_response": 1}
    g = _write(tmp_path / "u.jsonl", [{"prompt": "Q", "completion": "A", "label": True}])
    assert load_unpaired(g).rows == [{"prompt": "Q", "completion": "A", "label": True}]
    h = _write(tmp_path / "u2.jsonl", [{"prompt": "Q", "completion": "A", "label": 1}])
    with pytest.raises(DataFormatError, match=r"u2\.jsonl:line 1: 'label' must be true or false"):
        load_unpaired(h)


# --- BPO, Dolly ----------------------------------------------------------------------------------------------


def test_load_bpo_fixture(fixtures: Path) -> None:
    loaded = load_bpo(fixtures / "bpo_small.json")
    assert (loaded.read, len(loaded), loaded.n_skipped) == (4, 4, 0)
    assert set(loaded[0]) == {"prompt", "optimized_prompt", "good_res", "bad_res"}
    assert set(loaded[3]) == {"prompt", "optimized_prompt"}


def test_load_bpo_rejects_rows_with_nothing_to_learn(tmp_path: Path) -> None:
    f = tmp_path / "b.json"
    f.write_text(json.dumps([{"prompt": "p", "optimized_prompt": "q"}, {"prompt": "p", "good_res": "g"}]))
    with pytest.raises(DataFormatError, match=r"b\.json:item 2: a BPO row needs"):
        load_bpo(f)
    g = tmp_path / "b2.json"
    g.write_text(json.dumps([{"prompt": " ", "optimized_prompt": "q"}]))
    assert dict(load_bpo(g).skipped) == {"empty_prompt": 1}


def test_load_bpo_training_layout_joins_instruction_and_context(tmp_path: Path) -> None:
    # BPO's training data names the prompt `instruction` (+ `context`); load_any sniffs it as bpo, not dolly
    f = tmp_path / "train.json"
    rows = [
        {
            "instruction": "Summarise this.",
            "context": "A long text.",
            "optimized_prompt": "o",
            "good_res": "g",
            "bad_res": "b",
            "source": "oasst1",
        },
        {"instruction": " Name a colour. ", "context": "", "good_res": "g", "bad_res": "b"},
    ]
    f.write_text(json.dumps(rows))
    loaded = load_any(f)
    assert loaded.kind == "bpo"
    assert [r["prompt"] for r in loaded] == ["Summarise this.\nA long text.", "Name a colour."]
    f.write_text(json.dumps([{"instruction": 3, "good_res": "g", "bad_res": "b"}]))
    with pytest.raises(DataFormatError, match="instruction"):
        load_bpo(f)


def test_load_dolly_fixture(fixtures: Path) -> None:
    loaded = load_dolly(fixtures / "dolly_small.json")
    assert len(loaded) == 3
    assert set(loaded[0]) == {"instruction", "context", "response", "category"}  # idx dropped
    assert loaded[0]["context"] and not loaded[1]["context"]


# --- gateway exports -----------------------------------------------------------------------------------------


def test_gateway_exports_tolerate_extra_keys(fixtures: Path) -> None:
    prefs = load_gateway_export(fixtures / "export_preferences.jsonl", "preferences")
    assert len(prefs) == 2 and set(prefs[0]) == {"prompt", "chosen", "rejected"}
    assert prefs[0]["prompt"] == [{"role": "user", "content": "How do I boil an egg?"}]
    assert [m["role"] for m in prefs[1]["prompt"]] == ["user", "assistant", "user"]
    aligner = load_gateway_export(fixtures / "export_aligner.jsonl", "aligner")
    assert len(aligner) == 2 and dict(aligner.skipped) == {"empty_field": 1}
    assert set(aligner[0]) == {"question", "answer", "correction"}
    rewriter = load_gateway_export(fixtures / "export_rewriter.jsonl", "rewriter")
    assert rewriter.rows[0] == {
        "prompt": "tips for sleep",
        "optimized_prompt": "Give me practical, evidence-based tips for falling asleep faster and sleeping better.",
    }
    with pytest.raises(ValueError, match="unknown export kind"):
        load_gateway_export(fixtures / "export_rewriter.jsonl", "kto")


# --- sniffing --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "kind", "count"),
    [
        ("hh_small.jsonl", "hh-rlhf", 4),
        ("prefs_small.jsonl", "preferences", 4),
        ("messages_small.jsonl", "messages", 2),
        ("bpo_small.json", "bpo", 4),
        ("dolly_small.json", "dolly", 3),
        ("export_preferences.jsonl", "preferences", 2),
        ("export_aligner.jsonl", "aligner", 2),
        ("export_rewriter.jsonl", "rewriter", 2),
    ],
)
def test_load_any_sniffs_the_kind(fixtures: Path, name: str, kind: str, count: int) -> None:
    loaded = load_any(fixtures / name)
    assert (loaded.kind, len(loaded)) == (kind, count)


def test_sniff_kind_rows() -> None:
    assert sniff_kind({"prompt": "p", "completion": "c"}) == "prompt-completion"
    assert sniff_kind({"prompt": "p", "completion": "c", "label": False}) == "unpaired"
    assert sniff_kind({"chosen": [{"role": "user", "content": "x"}], "rejected": []}) == "preferences"
    assert sniff_kind({"chosen": "no markers", "rejected": "x"}) is None
    assert sniff_kind({"text": "x"}) is None


def test_load_any_errors(tmp_path: Path, fixtures: Path) -> None:
    f = _write(tmp_path / "odd.jsonl", [{"text": "hello"}])
    with pytest.raises(DataFormatError, match=r"odd\.jsonl:line 1: cannot tell the data format"):
        load_any(f)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(DataFormatError, match="no rows"):
        load_any(empty)
    with pytest.raises(ValueError, match="unknown data kind"):
        load_any(fixtures / "bpo_small.json", "csv")
    with pytest.raises(FileNotFoundError):
        load_any(tmp_path / "missing.jsonl")
    # An explicit kind overrides sniffing: BPO rows as a rewriter export.
    assert load_any(fixtures / "bpo_small.json", "rewriter").kind == "rewriter"
