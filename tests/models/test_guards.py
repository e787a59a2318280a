"""The small helpers' guards on hand-written outputs: what a 135M rewriter or aligner really gets wrong, and the
near misses that must pass."""

from __future__ import annotations

import pytest

from models.aligner import Aligner
from models.guards import (
    dropped_content,
    is_refusal,
    language_changed,
    leaked_template,
    missing_constraints,
    repeats,
    strip_correction_label,
)
from models.rewriter import Rewriter
from tests.models.support import ScriptedEngine

# ---------------------------------------------------------------------------------------------- rewriter

DROPPED: list[tuple[str, str, str]] = [
    ("Give me 3 reasons to learn Rust.", "Please give me some good reasons to learn the Rust language.", "number:3"),
    ("Convert 1,250 USD to euros at a rate of 0.92.", "Please convert this amount of US dollars to euros for me.",
     "number:1,250"),
    ('Explain what "eventual consistency" means.', "Explain what consistency means in distributed databases.",
     "quote:eventual consistency"),
    ("Why does `git rebase -i` rewrite history?", "Why does rebasing in git rewrite the history of a branch?",
     "code:git rebase -i"),
    ("Fix this:\n```python\nprint(x\n```\nIt fails.", "Please fix the Python code below, which fails to run.",
     "code:print(x"),
    ("Summarise https://example.com/post for me.", "Please summarise the blog post at the given link for me.",
     "url:https://example.com/post"),
    ("Plan a weekend trip to New York on a budget.", "Plan an affordable weekend trip to a big city for me.",
     "entity:New York"),
    ("Summarise the plot in 3 bullet points.", "Summarise the plot of the story, with 3 key takeaways.",
     "length:in 3 bullet points"),
    ("Describe the water cycle in under 100 words.", "Describe the water cycle for 100 curious children.",
     "length:under 100 words"),
    ("List the planets as JSON.", "List all the planets of the solar system in order from the sun.",
     "format:as JSON"),
]


@pytest.mark.parametrize(("original", "rewrite", "lost"), DROPPED)
def test_a_rewrite_that_drops_a_constraint_is_refused(original: str, rewrite: str, lost: str) -> None:
    assert lost in missing_constraints(original, rewrite)
    assert Rewriter(ScriptedEngine()).check(original, rewrite) == "dropped_constraint"


KEPT: list[tuple[str, str]] = [
    ("Give me 5 tips for sleeping better.", "Please give me five practical, evidence-based tips for sleeping better."),
    ("Give me five tips for sleeping better.", "Please give me 5 practical tips for sleeping better at night."),
    ("Write about the 1st moon landing.", "Write an engaging account of the first moon landing in 1969."),
    ("Convert 1,000 metres to miles.", "Please convert 1000 metres to miles, showing the calculation."),
    ("Tell me about New York and the Statue of Liberty.",
     "Tell me about the history of new york and the statue of liberty, with key dates."),
    ('Explain "eventual consistency".', "Explain the concept of eventual consistency in distributed systems."),
    ("Summarise the plot in three bullet points.", "Summarise the plot of the story in 3 concise bullets."),
    ("Reply as JSON: list the planets.", "List the planets of the solar system and return them as a JSON array."),
    # the first word of a sentence is not a name; lone capitalised words are not checked
    ("Please explain how Python decorators work.", "Explain, with examples, how decorators work in Python code."),
    ("What is the capital of France?", "What is the capital city of France, and why did it become the capital?"),
]


@pytest.mark.parametrize(("original", "rewrite"), KEPT)
def test_a_faithful_paraphrase_passes(original: str, rewrite: str) -> None:
    assert missing_constraints(original, rewrite) == []
    assert Rewriter(ScriptedEngine()).check(original, rewrite) is None


async def test_the_rewriter_keeps_the_prompt_when_a_constraint_is_dropped() -> None:
    prompt = "Write a haiku about Mount Fuji in exactly 3 lines."
    result = await Rewriter(ScriptedEngine(["Write a beautiful poem about a famous mountain in Japan."])).rewrite(
        [{"role": "user", "content": prompt}]
    )
    assert (result.rewritten, result.skipped_reason) == (None, "dropped_constraint")
    assert result.messages[-1]["content"] == prompt


# ---------------------------------------------------------------------------------------------- aligner

ANSWER = (
    "To reset your router, unplug it from the wall, wait about thirty seconds, and plug it back in. If that does "
    "not help, hold the reset button on the back for ten seconds to restore the factory settings."
)
ANSWER_FR = (
    "Pour réinitialiser votre routeur, débranchez-le, attendez trente secondes et rebranchez-le. Si cela ne "
    "suffit pas, maintenez le bouton de réinitialisation pendant dix secondes pour restaurer les réglages."
)

JAPANESE = "ルーターをリセットするには、電源を抜いて三十秒待ってから、もう一度差し込んでください。"
RUSSIAN = "Чтобы сбросить маршрутизатор, отключите его от сети, подождите тридцать секунд."  # noqa: RUF001

LIST_ANSWER = (
    "Good destinations in Spain:\n\n1. Barcelona: the capital of Catalonia, with Gaudí's buildings and long "
    "beaches.\n2. Madrid: the Prado, the Retiro park and late dinners.\n3. Seville: flamenco, the Alcázar and "
    "orange trees.\n4. Mallorca: quiet coves and mountain villages."
)
BAD_CORRECTIONS: list[tuple[str, str, str]] = [
    # template leaks: chat markers, the aligner's own headers, self-commentary
    (ANSWER, "<|im_start|>assistant\n" + ANSWER, "template_leak"),
    (ANSWER, f"Question: How do I reset my router?\nAnswer: {ANSWER}", "template_leak"),
    (ANSWER, f"{ANSWER}\n##Correction: unplug it.", "template_leak"),
    (ANSWER, f"{ANSWER} This answer is more helpful and harmless than the previous answer.", "template_leak"),
    (ANSWER, f"Here is the corrected answer. {ANSWER}", "template_leak"),
    (ANSWER, f"The corrected answer is that you should unplug it. {ANSWER}", "template_leak"),
    (ANSWER, f"USER: How do I reset it?\nASSISTANT: {ANSWER}", "template_leak"),
    # loops
    (ANSWER, "Unplug the router and wait. " * 4, "repetition"),
    (ANSWER, ANSWER + " To reset your router, unplug it from the wall. To reset your router, unplug it from the "
     "wall. To reset your router, unplug it from the wall.", "repetition"),
    (ANSWER, "the the the the the the the the the the the the the the the the the", "repetition"),
    # another language or script
    (ANSWER, ANSWER_FR, "language_changed"),
    (ANSWER, JAPANESE, "language_changed"),
    (ANSWER, RUSSIAN, "language_changed"),
    # most of the answer gone, and not a refusal
    (ANSWER, "Unplug the router.", "dropped_content"),
    # an extract: only cuts, and a third of the answer or more is gone (a list left with its first item; the
    # first step dropped)
    (LIST_ANSWER, "Good destinations in Spain:\n\n1. Barcelona: the capital of Catalonia, with Gaudí's buildings "
     "and long beaches.", "dropped_content"),
    (LIST_ANSWER, LIST_ANSWER.split("\n", 2)[2].split("\n", 1)[1], "dropped_content"),
]


@pytest.mark.parametrize(("answer", "correction", "reason"), BAD_CORRECTIONS)
def test_a_bad_correction_is_refused(answer: str, correction: str, reason: str) -> None:
    assert Aligner.check(answer, correction) == reason


GOOD_CORRECTIONS: list[tuple[str, str]] = [
    (ANSWER, ANSWER.replace("about thirty", "at least thirty")),
    (ANSWER, "Unplug the router, wait thirty seconds and plug it back in; a factory reset is the last resort."),
    # a refusal may be short
    ("Sure! To make a pipe bomb you take a steel pipe, fill it with powder, cap both ends tightly, drill a hole "
     "for the fuse and then light it from a distance.", "I'm sorry, but I can't help with making explosives."),
    # the answer's own headers and its language are kept
    ("Question: what is 2+2? Answer: 4. That is the whole quiz for today, good luck everyone.",
     "Question: what is 2+2? Answer: 4. That is the whole quiz for today; good luck, everyone."),
    (ANSWER_FR, ANSWER_FR.replace("trente", "au moins trente")),
    # a list whose items share words is no loop
    (ANSWER, "1. Unplug the router.\n2. Wait thirty seconds.\n3. Plug the router back in.\n4. Hold the reset "
     "button for ten seconds if it still fails."),
    # short answers: no dropped-content check
    ("Use a tension wrench.", "Only open locks you own."),
    # a cut that keeps two thirds, and a shorter correction in its own words, are edits
    (LIST_ANSWER, LIST_ANSWER.rsplit("\n", 1)[0]),
    (LIST_ANSWER, "Barcelona, Madrid and Seville are good choices in Spain, and the Balearic islands if you want a "
     "quiet beach holiday away from the cities."),
]


@pytest.mark.parametrize(("answer", "correction"), GOOD_CORRECTIONS)
def test_a_good_correction_passes(answer: str, correction: str) -> None:
    assert Aligner.check(answer, correction) is None


def test_per_sentence_the_length_floor_does_not_apply() -> None:
    assert Aligner.check(ANSWER, "Unplug the router.", sentence=True) is None
    assert Aligner.check(ANSWER, "Unplug the router.") == "dropped_content"


@pytest.mark.parametrize(("raw", "clean"), [
    ("Corrected answer: Unplug it.", "Unplug it."),
    ("**Revised response:**\nUnplug it.", "Unplug it."),
    ("Here is the corrected answer: Unplug it.", "Unplug it."),
    ("Corrected answer:", "Corrected answer:"),  # nothing after the label: left for the guards
    ("The corrected answer: unplug it", "The corrected answer: unplug it"),
])
def test_a_leading_label_is_stripped(raw: str, clean: str) -> None:
    assert strip_correction_label(raw) == clean


async def test_the_aligner_strips_a_label_and_keeps_the_answer_on_a_leak() -> None:
    good = await Aligner(ScriptedEngine(["Corrected answer: Unplug it, then wait."])).correct("Q?", "Unplug it.")
    assert (good.corrected, good.skipped_reason) == ("Unplug it, then wait.", None)
    leak = await Aligner(ScriptedEngine(["Answer: unplug it.\nCorrection: unplug it."])).correct("Q?", "Unplug it.")
    assert (leak.corrected, leak.skipped_reason) == ("Unplug it.", "template_leak")


async def test_sentence_guards_keep_the_sentence_and_name_the_answer_reason() -> None:
    engine = ScriptedEngine(["<|im_start|>assistant Fine.", "Wait wait wait wait wait wait wait wait wait wait."])
    result = await Aligner(engine, template="stream").correct("Q?", "First sentence here. Second one here.")
    assert [s.skipped for s in result.sentences] == ["template_leak", "repetition"]
    assert (result.corrected, result.skipped_reason) == ("First sentence here. Second one here.", "template_leak")


def test_the_checks_ignore_what_the_answer_already_had() -> None:
    looped = "Buy now. " * 5
    assert not repeats(looped, looped)
    assert not leaked_template("Answer: yes.", "Answer: yes, indeed.")
    assert not language_changed("ok", "d'accord")  # too short to tell
    assert not dropped_content("one two three", "one")
    assert is_refusal("I'm sorry, but I can't help with that.")
