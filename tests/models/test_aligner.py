"""The Aligner-style corrector: corrections, fallbacks to the original, streaming, and multi-turn questions."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from models.aligner import Aligner, SentenceResult, question_from_messages
from models.engine import ChatTurn, EngineError, EngineTimeout, SamplingParams
from models.remote import RemoteEngine
from models.templates import TemplateError
from tests.models.support import FakeUpstream, ScriptedEngine

Q = "How do I {pick} a lock?"
A = "Use a {tension} wrench."


def v1(question: str, answer: str) -> str:
    return (
        "BEGINNING OF CONVERSATION: USER: Edit the following Question-Answer pair to make it more helpful and "
        f"harmless: {question} | {answer} ASSISTANT:"
    )


def stream_prompt(question: str, prefix: str, last: str) -> str:
    return (
        f"<start_of_turn>user\n##Question: {question} | ##Answer_Prefix: {prefix} | ##Answer_Last_Sentence: {last} |"
        " ##Your_Revision: <end_of_turn>\n<start_of_turn>model"
    )


# ---------------------------------------------------------------------------------------------- correct


async def test_correction() -> None:
    engine = ScriptedEngine(["  Only open locks you own; a locksmith can help. \n"])
    result = await Aligner(engine).correct(Q, A)
    assert result.corrected == "Only open locks you own; a locksmith can help."
    assert (result.original, result.skipped_reason) == (A, None)
    assert result.elapsed_ms >= 0
    [call] = engine.calls
    assert call.method == "complete"
    assert call.prompt == v1(Q, A)
    assert call.params == SamplingParams(max_tokens=2048, temperature=0.0, top_p=1.0)


async def test_aligner_v2_and_max_tokens() -> None:
    engine = ScriptedEngine(["Fixed."])
    await Aligner(engine, template="aligner-v2", max_tokens=99).correct("Q?", "A.")
    assert engine.calls[0].prompt == (
        "BEGINNING OF CONVERSATION: USER: ##Question: Q?\n##Answer: A.\n##Correction:  ASSISTANT:"
    )
    assert engine.calls[0].params.max_tokens == 99


async def test_chat_template_uses_engine_chat() -> None:
    engine = ScriptedEngine(["Fixed."])
    result = await Aligner(engine, template="aligner-chat").correct("Q?", "A.")
    assert result.corrected == "Fixed."
    assert engine.calls[0].method == "chat"
    assert engine.calls[0].prompt == (
        ChatTurn("system", "Edit the following Question-Answer pair to make it more helpful and harmless."),
        ChatTurn("user", "Question: Q?\nAnswer: A."),
    )


def test_rewriter_template_is_refused() -> None:
    with pytest.raises(TemplateError, match="aligner-v1, aligner-v2, aligner-chat"):
        Aligner(ScriptedEngine(), template="bpo")


@pytest.mark.parametrize(("output", "finish", "reason"), [("", "stop", "empty"), (" \n ", "stop", "empty"),
                                                            ("Half a corr", "length", "truncated")])
async def test_fallbacks_keep_the_original(output: str, finish: Any, reason: Any) -> None:
    result = await Aligner(ScriptedEngine([output], finish_reason=finish)).correct(Q, A)
    assert (result.corrected, result.original, result.skipped_reason, result.tokens) == (A, A, reason, None)
    assert result.helper_prompt_tokens > 0  # the helper's tokens are spent all the same


async def test_empty_answer_is_not_sent() -> None:
    engine = ScriptedEngine(["made up"])
    result = await Aligner(engine).correct(Q, "  ")
    assert (result.corrected, result.skipped_reason) == ("  ", "no_answer")
    assert engine.calls == []


async def test_timeout_and_errors() -> None:
    with pytest.raises(EngineTimeout, match=r"aligner .* within 0.05s"):
        await Aligner(ScriptedEngine(delay_s=5), timeout_s=0.05).correct(Q, A)
    with pytest.raises(EngineError, match="boom"):
        await Aligner(ScriptedEngine(error=EngineError("boom"))).correct(Q, A)


# ---------------------------------------------------------------------------------------------- streaming


async def test_stream_deltas_concatenate_to_the_correction() -> None:
    reply = "  Only open locks you own.\nAsk a locksmith.  \n"
    engine = ScriptedEngine([reply])
    aligner = Aligner(engine)
    stream = aligner.stream_correct(Q, A)
    pieces = [p async for p in stream]
    assert len(pieces) > 3
    assert all(pieces)
    assert "".join(pieces) == (await aligner.correct(Q, A)).corrected == reply.strip()
    assert engine.calls[0].method == "stream_complete"
    assert engine.calls[0].prompt == v1(Q, A)
    assert stream.result is not None
    assert (stream.result.corrected, stream.result.skipped_reason) == (reply.strip(), None)
    assert engine.streams_closed == 1


async def test_stream_keeps_inner_whitespace_pieces() -> None:
    engine = ScriptedEngine(pieces=[" ", "  Hello", " ", "\n", "world", "\n\n", " "])
    pieces = [p async for p in Aligner(engine).stream_correct(Q, A)]
    assert pieces == ["Hello", " \nworld"]


@pytest.mark.parametrize("pieces", [[], ["", " ", "\n"]])
async def test_stream_empty_falls_back_to_the_original(pieces: list[str]) -> None:
    stream = Aligner(ScriptedEngine(pieces=pieces)).stream_correct(Q, A)
    assert [p async for p in stream] == [A]
    assert stream.result is not None
    assert stream.result.skipped_reason == "empty"


async def test_stream_of_an_empty_answer() -> None:
    engine = ScriptedEngine(["made up"])
    stream = Aligner(engine).stream_correct(Q, "")
    assert [p async for p in stream] == []
    assert engine.calls == []
    assert stream.result is not None
    assert stream.result.skipped_reason == "no_answer"


async def test_stream_timeout() -> None:
    stream = Aligner(ScriptedEngine(delay_s=5), timeout_s=0.05).stream_correct(Q, A)
    with pytest.raises(EngineTimeout):
        _ = [p async for p in stream]


async def test_stream_closed_early_closes_the_engine_stream() -> None:
    engine = ScriptedEngine(["a b c d e f"])
    stream = Aligner(engine).stream_correct(Q, A)
    assert await anext(stream) == "a"
    await stream.aclose()
    assert engine.streams_closed == 1
    assert stream.result is None


async def test_stream_on_the_fake_upstream(fake: FakeUpstream) -> None:
    engine = RemoteEngine(fake.v1, "aligner", extra_body={"fake": {"token_delay_s": 0.001}})
    try:
        aligner = Aligner(engine, template="aligner-v2")
        pieces = [p async for p in aligner.stream_correct("Q {x}?", "A | B.")]
        whole = await aligner.correct("Q {x}?", "A | B.")
    finally:
        await engine.close()
    prompt = "BEGINNING OF CONVERSATION: USER: ##Question: Q {x}?\n##Answer: A | B.\n##Correction:  ASSISTANT:"
    assert len(pieces) > 5
    # the fake echoes the aligner's own template back: streamed, it goes out as generated; whole, a guard keeps A
    assert "".join(pieces) == f"Hello from helper! You said: {prompt}"
    assert (whole.corrected, whole.skipped_reason) == ("A | B.", "template_leak")
    requests = fake.requests()
    assert [r["body"]["prompt"] for r in requests] == [prompt, prompt]
    assert [r["body"].get("stream", False) for r in requests] == [True, False]
    assert all(r["body"]["temperature"] == 0.0 for r in requests)


async def test_aligner_v1_prompt_on_the_wire(fake: FakeUpstream) -> None:
    engine = RemoteEngine(fake.v1, "aligner")
    try:
        result = await Aligner(engine).correct(Q, A)
    finally:
        await engine.close()
    expected = (
        "BEGINNING OF CONVERSATION: USER: Edit the following Question-Answer pair to make it more helpful and "
        "harmless: How do I {pick} a lock? | Use a {tension} wrench. ASSISTANT:"
    )
    [req] = fake.requests()
    assert req["body"]["prompt"] == expected
    assert (result.corrected, result.skipped_reason) == (A, "template_leak")  # the fake echoed the template


async def test_stream_is_concurrency_safe() -> None:
    engine = ScriptedEngine(["one two three"])
    aligner = Aligner(engine)

    async def run() -> str:
        return "".join([p async for p in aligner.stream_correct(Q, A)])

    assert await asyncio.gather(*(run() for _ in range(5))) == ["one two three"] * 5


# ---------------------------------------------------------------------------------------------- question


def msgs(*turns: tuple[str, Any]) -> list[dict[str, Any]]:
    return [{"role": role, "content": content} for role, content in turns]


def test_question_single_turn_is_verbatim() -> None:
    assert question_from_messages(msgs(("user", "  Line one\nline {two}  "))) == "  Line one\nline {two}  "
    assert question_from_messages(msgs(("system", "Be a pirate."), ("user", "hi"))) == "hi"


def test_question_multi_turn_format() -> None:
    messages = msgs(
        ("system", "You are a pirate."),
        ("user", "hi\n  there"),
        ("assistant", "Arr, hello!"),
        ("assistant", None),  # a tool-call-only turn: skipped
        ("tool", "42"),
        ("user", [{"type": "text", "text": "And now?\nTell me."}, {"type": "image_url", "image_url": {}}]),
        ("assistant", "later turns are left out"),
    )
    assert question_from_messages(messages) == (
        "System: You are a pirate.\n"
        "User: hi there\n"
        "Assistant: Arr, hello!\n"
        "Tool: 42\n"
        "User: And now?\nTell me."
    )


def test_question_limits() -> None:
    messages = msgs(*[("user" if i % 2 == 0 else "assistant", f"turn {i} " + "x" * 20) for i in range(9)])
    got = question_from_messages(messages, max_context_turns=2, max_turn_chars=10)
    assert got == "User: turn 6 xx…\nAssistant: turn 7 xx…\nUser: turn 8 " + "x" * 20


def test_question_without_a_user_message() -> None:
    assert question_from_messages(msgs(("system", "S"), ("assistant", "A"))) == "System: S\nAssistant: A"
    assert question_from_messages([]) == ""


# ---------------------------------------------------------------------------------------------- sentence templates


async def test_correct_sentence_renders_the_stream_template_and_strips_the_output() -> None:
    engine = ScriptedEngine(["  Ask a locksmith. \n"])
    aligner = Aligner(engine, template="stream")
    assert aligner.sentence and not Aligner(engine).sentence
    result = await aligner.correct_sentence(Q, "Locks are tricky.", "Use a {tension} wrench.")
    assert (result.corrected, result.original, result.skipped_reason) == (
        "Ask a locksmith.", "Use a {tension} wrench.", None
    )
    assert engine.calls[0].method == "complete"
    assert engine.calls[0].prompt == stream_prompt(Q, "Locks are tricky.", "Use a {tension} wrench.")


async def test_stream_chat_sends_the_input_as_the_user_message() -> None:
    engine = ScriptedEngine(["Fixed."])
    await Aligner(engine, template="stream-chat").correct_sentence("Q?", "", "A.")
    assert engine.calls[0].method == "chat"
    system, user = engine.calls[0].prompt
    assert system.role == "system" and "last sentence" in system.content
    assert user == ChatTurn(
        "user", "##Question: Q? | ##Answer_Prefix:  | ##Answer_Last_Sentence: A. | ##Your_Revision: "
    )


@pytest.mark.parametrize(("output", "finish", "reason"), [("", "stop", "empty"), ("Half a", "length", "truncated")])
async def test_a_bad_sentence_correction_keeps_the_sentence(output: str, finish: Any, reason: Any) -> None:
    result = await Aligner(ScriptedEngine([output], finish_reason=finish), template="stream").correct_sentence(
        "Q?", "", "A."
    )
    assert (result.corrected, result.skipped_reason) == ("A.", reason)


async def test_a_whole_answer_is_corrected_sentence_by_sentence_with_the_corrected_prefix() -> None:
    engine = ScriptedEngine(["One fixed.", "", "Three fixed."])
    answer = "One.  Two.\n```\ncode. Not a sentence.\n```\nThree."
    result = await Aligner(engine, template="stream").correct("Q?", answer)
    assert result.corrected == "One fixed.  Two.\n```\ncode. Not a sentence.\n```\nThree fixed."
    assert (result.original, result.skipped_reason) == (answer, None)
    assert [(r.original, r.served, r.skipped) for r in result.sentences] == [
        ("One.  ", "One fixed.  ", None),
        ("Two.\n", "Two.\n", "empty"),
        ("```\ncode. Not a sentence.\n```\n", "```\ncode. Not a sentence.\n```\n", "code"),
        ("Three.", "Three fixed.", None),
    ]
    assert [c.prompt for c in engine.calls] == [  # the code block is never sent; each prefix is what was served
        stream_prompt("Q?", "", "One."),
        stream_prompt("Q?", "One fixed.", "Two."),
        stream_prompt("Q?", "One fixed.  Two.\n```\ncode. Not a sentence.\n```", "Three."),
    ]


async def test_a_whole_answer_none_of_whose_sentences_changed_is_kept_with_the_first_reason() -> None:
    result = await Aligner(ScriptedEngine([""]), template="stream").correct("Q?", "One. Two.")
    assert (result.corrected, result.skipped_reason) == ("One. Two.", "empty")
    assert all(isinstance(r, SentenceResult) and not r.corrected for r in result.sentences)
    empty = await Aligner(ScriptedEngine(["x"]), template="stream").correct("Q?", "  ")
    assert (empty.corrected, empty.skipped_reason) == ("  ", "no_answer")


async def test_an_engine_failure_on_any_sentence_fails_the_whole_correction() -> None:
    engine = ScriptedEngine(["ok"], error=EngineError("down"))
    with pytest.raises(EngineError):
        await Aligner(engine, template="stream").correct("Q?", "One. Two.")


async def test_stream_correct_with_a_sentence_template_yields_each_segment_when_done() -> None:
    engine = ScriptedEngine(["One fixed.", "Two fixed."])
    stream = Aligner(engine, template="stream").stream_correct("Q?", "One. Two.")
    assert [d async for d in stream] == ["One fixed. ", "Two fixed."]
    assert stream.result is not None
    assert (stream.result.corrected, stream.result.skipped_reason) == ("One fixed. Two fixed.", None)
    assert len(stream.result.sentences) == 2


async def test_a_sentence_correction_is_bounded_by_the_sentences_length() -> None:
    """An aligner that writes a whole answer where one sentence was asked for stops at twice the sentence's
    length (+16 tokens), so the client does not wait for up to its max_tokens: that correction is truncated and
    the sentence kept."""
    from models.aligner import sentence_token_cap

    sentence = "Preheat the oven to 220 degrees."  # 32 bytes: 11 estimated tokens
    assert sentence_token_cap(sentence) == 2 * 11 + 16
    assert sentence_token_cap("烤面包。") == 2 * 4 + 16  # 12 bytes: one token per CJK character
    engine = ScriptedEngine(["Step 1 ... " * 40], finish_reason="length")
    result = await Aligner(engine, template="stream", max_tokens=512).correct_sentence("Q?", "", sentence)
    assert engine.calls[0].params.max_tokens == 38
    assert (result.corrected, result.skipped_reason) == (sentence, "truncated")
    await Aligner(engine, template="stream", max_tokens=512).correct_sentence("Q?", "", sentence, max_tokens=5)
    assert engine.calls[1].params.max_tokens == 5  # what is left of the client's budget lowers it further
