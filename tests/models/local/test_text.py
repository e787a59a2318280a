"""Incremental detokenization (no split characters) and stop strings (cut, held-back tails)."""

from __future__ import annotations

import pytest

from models.local.detok import REPLACEMENT, IncrementalDetokenizer, StopText
from tests.models.local.tiny import build_tokenizer

TEXTS = ["hello🎉 worldé is readyж", "naïve café — 日本語 ✓ the quick brown fox", "  spaces   and\nnew lines 🎉🎉 "]


@pytest.mark.parametrize("text", TEXTS)
def test_pieces_never_split_a_character_and_add_up_to_the_full_decode(text: str) -> None:
    tokenizer = build_tokenizer()
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert any(token.startswith("<0x") for token in tokenizer.convert_ids_to_tokens(ids))  # byte fallback in play
    detok = IncrementalDetokenizer(lambda t: tokenizer.decode(t, skip_special_tokens=True))
    pieces = [detok.push(token) for token in ids]
    pieces.append(detok.flush())
    assert all(REPLACEMENT not in piece for piece in pieces)
    assert "".join(pieces) == tokenizer.decode(ids, skip_special_tokens=True)


def test_special_tokens_are_skipped_and_an_unfinished_character_flushes_as_replacement() -> None:
    tokenizer = build_tokenizer()
    detok = IncrementalDetokenizer(lambda t: tokenizer.decode(t, skip_special_tokens=True))
    eos = tokenizer.eos_token_id
    assert detok.push(tokenizer.convert_tokens_to_ids("▁hello")) == "hello"
    assert detok.push(eos) == ""
    assert detok.push(tokenizer.convert_tokens_to_ids("<0xF0>")) == ""  # first byte of a 4-byte character
    assert detok.flush() == REPLACEMENT


def test_stop_text_without_stops_passes_everything() -> None:
    stop = StopText()
    assert stop.feed("abc") == "abc"
    assert stop.finish() == ""
    assert stop.text == "abc"
    assert not stop.stopped


def test_stop_string_cuts_the_text_and_holds_possible_prefixes() -> None:
    stop = StopText(["\nUser:", "END"])
    assert stop.feed("Hello") == "Hello"
    assert stop.feed(" there\nUs") == " there"  # "\nUs" may begin "\nUser:"
    assert stop.feed("ually") == "\nUsually"  # it did not
    assert stop.feed(" E") == " "
    assert stop.feed("N") == ""
    assert stop.feed("D and more") == ""
    assert stop.stopped
    assert stop.text == "Hello there\nUsually "
    assert stop.feed("ignored") == ""


def test_stop_string_spanning_pieces_and_earliest_of_several() -> None:
    stop = StopText(["bc", "cd"])
    out = stop.feed("a") + stop.feed("b") + stop.feed("cd")
    assert (out, stop.text, stop.stopped) == ("a", "a", True)


def test_held_tail_is_released_at_finish() -> None:
    stop = StopText(["###"])
    assert stop.feed("answer #") == "answer "
    assert stop.feed("#") == ""
    assert stop.finish() == "##"
    assert stop.text == "answer ##"
