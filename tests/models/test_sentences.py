"""models/sentences.py: cutting answers into sentences, whole and as they stream in."""

from __future__ import annotations

import random

import pytest

from models.sentences import Segment, SentenceSplitter, split_sentences


def texts(text: str, max_chars: int = 400) -> list[str]:
    return [s.text for s in split_sentences(text, max_chars)]


def fed(pieces: list[str], max_chars: int = 400) -> list[Segment]:
    splitter = SentenceSplitter(max_chars)
    out: list[Segment] = []
    for piece in pieces:
        out += splitter.feed(piece)
    return out + splitter.finish()


def test_plain_sentences_keep_their_whitespace_and_concatenate_back() -> None:
    text = "First one. Second one!  Third one?\tLast"
    assert texts(text) == ["First one. ", "Second one!  ", "Third one?\t", "Last"]


@pytest.mark.parametrize("text", [
    "Ask Dr. Smith first. Then go.",
    "Fruit, e.g. apples, is fine. Then go.",
    "Fruit (i.e. Apples) is fine. Then go.",
    "Mr. and Mrs. Jones came. Then go.",
    "It weighs approx. Three kilos, cf. Fig. Two. Then go.",
    "The U.S. Army came. Then go.",
    "Written by J. R. R. Tolkien. Then go.",
    "It opens at 9 a.m. Daily. Then go.",
])
def test_abbreviations_initials_and_dotted_abbreviations_do_not_end_a_sentence(text: str) -> None:
    first, second = texts(text)
    assert second == "Then go."
    assert first == text.removesuffix("Then go.")


@pytest.mark.parametrize("text", [
    "Pi is 3.14 and e is 2.718. Then go.",
    "Install v1.2.3 or 10.0.1 first. Then go.",
    "See https://example.com/a.b?x=1&y=2.5#c or mail me@example.org. Then go.",
    "Call os.path.join(a, b) there. Then go.",
])
def test_decimals_versions_and_urls_stay_whole(text: str) -> None:
    assert texts(text) == [text.removesuffix("Then go."), "Then go."]


def test_a_sentence_ending_in_a_number_or_url_still_ends() -> None:
    assert texts("The answer is 42. It is. See https://x.org/a. Done.") == [
        "The answer is 42. ", "It is. ", "See https://x.org/a. ", "Done."
    ]


def test_numbered_and_bulleted_lists_are_one_segment_per_item() -> None:
    text = "Steps:\n1. Mix the flour.\n2. Add water. Stir well.\n10. Bake.\n- a bullet\n* another\niv. Roman"
    assert texts(text) == [
        "Steps:\n", "1. Mix the flour.\n", "2. Add water. ", "Stir well.\n", "10. Bake.\n", "- a bullet\n",
        "* another\n", "iv. Roman",
    ]


def test_a_number_ending_a_sentence_mid_line_is_not_a_list_number() -> None:
    assert texts("Do step 2. Then step 3.") == ["Do step 2. ", "Then step 3."]


def test_paragraphs_and_headings() -> None:
    assert texts("# Title\n\nOne para.\n\nTwo para") == ["# Title\n\n", "One para.\n\n", "Two para"]


def test_cjk_punctuation_ends_sentences_without_spaces() -> None:
    assert texts("今天天气很好。我们去公园吧\uff01你来吗\uff1f「好的。」然后") == [
        "今天天气很好。", "我们去公园吧\uff01", "你来吗\uff1f", "「好的。」", "然后"
    ]


def test_closing_quotes_brackets_and_emphasis_stay_with_their_sentence() -> None:
    assert texts('He said "Stop." Then left. (It rained.) **Note.** End') == [
        'He said "Stop." ', "Then left. ", "(It rained.) ", "**Note.** ", "End"
    ]


def test_a_lower_case_continuation_is_not_a_new_sentence() -> None:
    assert texts('Wait... what? she asked. "Yes!" he said. Well... Then.') == [
        "Wait... what? she asked. ", '"Yes!" he said. ', "Well... ", "Then."
    ]


def test_runs_of_punctuation() -> None:
    assert texts("Really?! Yes!!! Done…  Next") == ["Really?! ", "Yes!!! ", "Done…  ", "Next"]


def test_text_without_punctuation_is_cut_at_the_last_space_before_the_bound() -> None:
    text = " ".join(f"word{i}" for i in range(60))
    got = texts(text, max_chars=50)
    assert "".join(got) == text
    assert all(len(t) <= 50 for t in got)
    assert all(t.endswith(" ") for t in got[:-1])  # never inside a word
    assert len(got) > 1


def test_text_without_spaces_is_cut_at_the_bound() -> None:
    text = "字" * 25
    assert texts(text, max_chars=10) == ["字" * 10, "字" * 10, "字" * 5]


def test_a_fenced_code_block_is_one_segment_never_cut_and_marked_code() -> None:
    code = "```python\nx = 1. Y = 2.\nprint('a. B')\n" + "z = 0\n" * 100 + "```\n"
    segments = split_sentences("Run this.\n" + code + "Then done. Bye.", max_chars=40)
    assert [(s.kind, s.text) for s in segments] == [
        ("sentence", "Run this.\n"), ("code", code), ("sentence", "Then done. "), ("sentence", "Bye.")
    ]


def test_tilde_fences_longer_fences_and_an_unclosed_block() -> None:
    assert [(s.kind, s.text) for s in split_sentences("~~~\na. B\n~~~\nOk.")] == [
        ("code", "~~~\na. B\n~~~\n"), ("sentence", "Ok.")
    ]
    four = "````md\n```\ninner\n```\n````\n"  # a shorter fence inside does not close it
    assert [s.kind for s in split_sentences(four + "After.")] == ["code", "sentence"]
    assert split_sentences(four + "After.")[0].text == four
    assert [(s.kind, s.text) for s in split_sentences("Code:\n```\nnot closed. Still code.")] == [
        ("sentence", "Code:\n"), ("code", "```\nnot closed. Still code.")
    ]


def test_a_fence_in_the_middle_of_a_line_is_not_a_block() -> None:
    assert [s.kind for s in split_sentences("Use ```x``` inline. Then go.")] == ["sentence", "sentence"]


def test_inline_code_is_not_cut() -> None:
    assert texts("Call `a. B` now. Then go.") == ["Call `a. B` now. ", "Then go."]


def test_pieces_without_letters_or_digits_are_other() -> None:
    segments = split_sentences("Intro.\n---\n| a |\n|---|\n* \nEnd")
    assert [(s.kind, s.text) for s in segments] == [
        ("sentence", "Intro.\n"), ("other", "---\n"), ("sentence", "| a |\n"), ("other", "|---|\n"),
        ("other", "* \n"), ("sentence", "End"),
    ]


def test_leading_whitespace_stays_with_the_first_segment() -> None:
    segments = split_sentences("\n\n  Hello. World")
    assert [s.text for s in segments] == ["\n\n  Hello. ", "World"]
    assert segments[0].body == "Hello."
    assert segments[0].around() == ("\n\n  ", " ")
    assert segments[0].replaced("Hi there.") == "\n\n  Hi there. "
    assert split_sentences("   ") == [Segment("   ", "other")]
    assert split_sentences("") == []


def test_streaming_waits_for_the_next_character_before_deciding() -> None:
    splitter = SentenceSplitter()
    assert splitter.feed("Ask Dr.") == []
    assert splitter.feed(" ") == []
    assert splitter.feed("Smith. Then") == [Segment("Ask Dr. Smith. ", "sentence")]
    assert splitter.pending == "Then"
    assert splitter.feed(" go.") == []
    assert splitter.feed("\n") == []
    assert splitter.feed("\nNext") == [Segment("Then go.\n\n", "sentence")]
    assert splitter.finish() == [Segment("Next", "sentence")]
    assert splitter.finish() == []


def test_a_fence_split_across_pieces_is_recognised() -> None:
    got = fed(["Intro.\n", "`", "`", "`py\nx. Y\n", "``", "`\nAfter."])
    assert [(s.kind, s.text) for s in got] == [
        ("sentence", "Intro.\n"), ("code", "```py\nx. Y\n```\n"), ("sentence", "After.")
    ]


CORPUS = [
    "Hello world. This is Dr. Smith, e.g. a doctor. Pi is 3.14 and v1.2 is out. See https://example.com/a?b=1. Ok!",
    "Steps:\n1. First item.\n2. Second item\n\nThen more.\n```js\nlet a = 1. ;\n```\nDone. 日本語です。はい\uff01",
    'He said "Hi." Then he left. Wait... what? Really?! Yes. The U.S. Army. Use `os.path. Join` here. End',
    "no punctuation at all " * 30,
]


@pytest.mark.parametrize("text", CORPUS)
def test_any_way_of_feeding_gives_the_same_segments(text: str) -> None:
    whole = split_sentences(text, max_chars=120)
    assert "".join(s.text for s in whole) == text
    assert fed(list(text), max_chars=120) == whole  # character by character
    rng = random.Random(0)
    for _ in range(20):
        cuts = sorted(rng.sample(range(1, len(text)), k=min(12, len(text) - 1)))
        pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
        assert fed(pieces, max_chars=120) == whole


def test_max_chars_must_be_positive() -> None:
    with pytest.raises(ValueError):
        SentenceSplitter(0)
