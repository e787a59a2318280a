"""The BPO-style rewriter: last-user-message only, guards, output cleaning, cache and single flight."""

from __future__ import annotations

import asyncio
import copy
import math
from typing import Any

import pytest

from models.engine import ChatTurn, EngineError, EngineTimeout, SamplingParams
from models.remote import RemoteEngine
from models.rewriter import BPO_SAMPLING, Rewriter, clean_rewrite
from models.templates import TemplateError
from tests.models.support import FakeUpstream, ScriptedEngine

PROMPT = "Tell me a joke about cats"  # 6 words
GOOD = "Tell me a short, friendly and clean joke about cats, suitable for children."  # 13 words


def bpo(prompt: str) -> str:
    return (
        "[INST] You are an expert prompt engineer. Please help me improve this prompt to get a more helpful and "
        f"harmless response:\n{prompt} [/INST]"
    )


def chat(*turns: tuple[str, Any]) -> list[dict[str, Any]]:
    return [{"role": role, "content": content} for role, content in turns]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# ---------------------------------------------------------------------------------------------- rewriting


async def test_rewrites_only_the_last_user_message() -> None:
    engine = ScriptedEngine([GOOD])
    messages = chat(("system", "Be nice."), ("user", "first question"), ("assistant", "an answer"), ("user", PROMPT))
    before = copy.deepcopy(messages)
    result = await Rewriter(engine).rewrite(messages)
    assert result.skipped_reason is None
    assert (result.original, result.rewritten, result.cached) == (PROMPT, GOOD, False)
    assert result.messages == [*before[:3], {"role": "user", "content": GOOD}]
    assert messages == before  # the input is not mutated
    [call] = engine.calls
    assert call.method == "complete"
    assert call.prompt == bpo(PROMPT)
    # max_tokens: capped at what a rewrite within 6x the prompt's words could need (2 tokens a word + 16)
    budget = math.ceil(6 * len(PROMPT.split()) * 2) + 16
    assert call.params == SamplingParams(max_tokens=budget, temperature=0.6, top_p=0.9)
    assert result.elapsed_ms >= 0


async def test_last_user_message_even_before_later_turns() -> None:
    engine = ScriptedEngine([GOOD])
    messages = chat(("user", "old one two three"), ("user", PROMPT), ("assistant", "prefill"))
    result = await Rewriter(engine).rewrite(messages)
    assert [m["content"] for m in result.messages] == ["old one two three", GOOD, "prefill"]


async def test_content_parts_keep_non_text_parts() -> None:
    engine = ScriptedEngine([GOOD])
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,xx"}}
    parts = [{"type": "text", "text": "Tell me a joke"}, image, {"type": "text", "text": "about cats"}]
    result = await Rewriter(engine).rewrite(chat(("user", parts)))
    assert engine.calls[0].prompt == bpo("Tell me a joke\nabout cats")
    assert result.messages[0]["content"] == [{"type": "text", "text": GOOD}, image]


async def test_chat_template_uses_engine_chat() -> None:
    engine = ScriptedEngine([GOOD])
    result = await Rewriter(engine, template="bpo-chat").rewrite(chat(("user", PROMPT)))
    assert result.rewritten == GOOD
    [call] = engine.calls
    assert call.method == "chat"
    assert call.prompt == (
        ChatTurn("system", "You are an expert prompt engineer."),
        ChatTurn("user", f"Please help me improve this prompt to get a more helpful and harmless response:\n{PROMPT}"),
    )


def test_unknown_or_aligner_template_is_refused() -> None:
    with pytest.raises(TemplateError, match="bpo, bpo-chat"):
        Rewriter(ScriptedEngine(), template="aligner-v1")


# ---------------------------------------------------------------------------------------------- guards


@pytest.mark.parametrize(
    ("messages", "reason", "original"),
    [
        (chat(("system", "x"), ("assistant", "y")), "no_user_message", None),
        ([], "no_user_message", None),
        (chat(("user", "   ")), "no_text", "   "),
        (chat(("user", [{"type": "image_url", "image_url": {"url": "u"}}])), "no_text", ""),
        (chat(("user", " ".join(["word"] * 11))), "prompt_too_long", " ".join(["word"] * 11)),
    ],
)
async def test_guards_before_the_helper(messages: list[dict[str, Any]], reason: str, original: str | None) -> None:
    engine = ScriptedEngine([GOOD])
    result = await Rewriter(engine, max_prompt_words=10).rewrite(messages)
    assert result.skipped_reason == reason
    assert (result.original, result.rewritten) == (original, None)
    assert result.messages == messages
    assert engine.calls == []


async def test_prompt_of_exactly_max_words_is_rewritten() -> None:
    engine = ScriptedEngine([" ".join(["better"] * 10)])
    result = await Rewriter(engine, max_prompt_words=10).rewrite(chat(("user", " ".join(["word"] * 10))))
    assert result.skipped_reason is None


@pytest.mark.parametrize(
    ("output", "finish", "reason"),
    [
        ("", "stop", "empty"),
        ('  " "  ', "stop", "empty"),
        ("Improved prompt:", "stop", "empty"),
        (GOOD, "length", "truncated"),
        (" ".join(["w"] * 37), "stop", "too_long_output"),  # > 6 x 6 words
        ("Cats joke", "stop", "too_short_output"),  # 2 < 6 / 2
    ],
)
async def test_guards_on_the_output(output: str, finish: Any, reason: str) -> None:
    engine = ScriptedEngine([output], finish_reason=finish)
    rewriter = Rewriter(engine)
    messages = chat(("user", PROMPT))
    result = await rewriter.rewrite(messages)
    assert result.skipped_reason == reason
    assert result.rewritten is None
    assert result.original == PROMPT
    assert result.messages == messages
    await rewriter.rewrite(messages)
    assert len(engine.calls) == 2  # rejected rewrites are not cached


@pytest.mark.parametrize(("words", "ok"), [(36, True), (3, True), (37, False), (2, False)])
def test_ratio_bounds(words: int, ok: bool) -> None:
    rewriter = Rewriter(ScriptedEngine())
    assert (rewriter.check(PROMPT, " ".join(["w"] * words)) is None) == ok


async def test_engine_errors_propagate() -> None:
    engine = ScriptedEngine(error=EngineError("helper exploded"))
    with pytest.raises(EngineError, match="helper exploded"):
        await Rewriter(engine).rewrite(chat(("user", PROMPT)))


async def test_timeout() -> None:
    engine = ScriptedEngine([GOOD], delay_s=5)
    with pytest.raises(EngineTimeout, match=r"rewriter .* did not answer within 0.05s"):
        await Rewriter(engine, timeout_s=0.05).rewrite(chat(("user", PROMPT)))


# ---------------------------------------------------------------------------------------------- cleaning


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("  plain text \n", "plain text"),
        ('"quoted whole"', "quoted whole"),
        ("“curly quoted”", "curly quoted"),
        ("'single'", "single"),
        ("Optimized prompt: do the thing", "do the thing"),
        ("improved prompt:\n\n do the thing", "do the thing"),
        ('Improved Prompt: "do the thing"', "do the thing"),
        ("**Optimized prompt:** do the thing", "do the thing"),
        ("Here is the improved prompt: do it", "do it"),
        ('"a" or "b"', '"a" or "b"'),
        ("It's fine", "It's fine"),
        ("Explain the improved prompt: technique", "Explain the improved prompt: technique"),
        ("Prompt engineering tips", "Prompt engineering tips"),
    ],
)
def test_clean_rewrite(raw: str, clean: str) -> None:
    assert clean_rewrite(raw) == clean


async def test_cleaned_output_is_what_replaces_the_message() -> None:
    engine = ScriptedEngine([f'\n Optimized prompt: "{GOOD}" \n'])
    result = await Rewriter(engine).rewrite(chat(("user", PROMPT)))
    assert result.rewritten == GOOD
    assert result.messages[0]["content"] == GOOD


# ---------------------------------------------------------------------------------------------- cache


async def test_cache_hit() -> None:
    engine = ScriptedEngine([GOOD, "something else entirely different now"])
    rewriter = Rewriter(engine)
    first = await rewriter.rewrite(chat(("user", PROMPT)))
    second = await rewriter.rewrite(chat(("system", "other"), ("user", PROMPT)))
    assert (first.cached, second.cached) == (False, True)
    assert second.rewritten == GOOD
    assert second.messages[1]["content"] == GOOD
    assert len(engine.calls) == 1


async def test_cache_is_keyed_by_template() -> None:
    engine = ScriptedEngine([GOOD])
    first, second = Rewriter(engine), Rewriter(engine, template="bpo-chat")
    second.cache = first.cache  # one shared cache, two templates
    await first.rewrite(chat(("user", PROMPT)))
    result = await second.rewrite(chat(("user", PROMPT)))
    assert not result.cached
    assert len(engine.calls) == 2


async def test_cache_ttl_expiry() -> None:
    clock = Clock()
    engine = ScriptedEngine([GOOD])
    rewriter = Rewriter(engine, cache_ttl_s=600, clock=clock)
    await rewriter.rewrite(chat(("user", PROMPT)))
    clock.now += 599
    assert (await rewriter.rewrite(chat(("user", PROMPT)))).cached
    clock.now += 1
    assert not (await rewriter.rewrite(chat(("user", PROMPT)))).cached
    assert len(engine.calls) == 2


async def test_cache_lru_eviction() -> None:
    engine = ScriptedEngine(["one two three four"])
    rewriter = Rewriter(engine, cache_size=2)
    a, b, c = (chat(("user", f"prompt {x} here now")) for x in "abc")
    await rewriter.rewrite(a)
    await rewriter.rewrite(b)
    assert (await rewriter.rewrite(a)).cached  # a is now the most recently used
    await rewriter.rewrite(c)  # evicts b
    assert len(rewriter.cache) == 2
    assert (await rewriter.rewrite(a)).cached
    assert not (await rewriter.rewrite(b)).cached
    assert len(engine.calls) == 4


async def test_cache_disabled() -> None:
    engine = ScriptedEngine([GOOD])
    rewriter = Rewriter(engine, cache_size=0)
    await rewriter.rewrite(chat(("user", PROMPT)))
    assert not (await rewriter.rewrite(chat(("user", PROMPT)))).cached
    assert len(engine.calls) == 2


async def test_single_flight() -> None:
    engine = ScriptedEngine([GOOD], delay_s=0.05)
    rewriter = Rewriter(engine)
    results = await asyncio.gather(*(rewriter.rewrite(chat(("user", PROMPT))) for _ in range(10)))
    assert len(engine.calls) == 1
    assert all(r.rewritten == GOOD for r in results)
    assert sum(r.shared for r in results) == 9
    assert not any(r.cached for r in results)
    assert rewriter._inflight == {}


async def test_single_flight_shares_failures_too() -> None:
    engine = ScriptedEngine(error=EngineError("boom"), delay_s=0.02)
    rewriter = Rewriter(engine)
    results = await asyncio.gather(
        *(rewriter.rewrite(chat(("user", PROMPT))) for _ in range(5)), return_exceptions=True
    )
    assert all(isinstance(r, EngineError) for r in results)
    assert len(engine.calls) == 1


async def test_single_flight_survives_a_cancelled_caller() -> None:
    engine = ScriptedEngine([GOOD], delay_s=0.05)
    rewriter = Rewriter(engine)
    first = asyncio.create_task(rewriter.rewrite(chat(("user", PROMPT))))
    second = asyncio.create_task(rewriter.rewrite(chat(("user", PROMPT))))
    await asyncio.sleep(0.01)
    first.cancel()
    result = await second
    assert result.rewritten == GOOD
    assert first.cancelled()
    assert len(engine.calls) == 1


async def test_last_caller_going_away_cancels_the_call() -> None:
    engine = ScriptedEngine([GOOD], delay_s=5)
    rewriter = Rewriter(engine)
    task = asyncio.create_task(rewriter.rewrite(chat(("user", PROMPT))))
    await asyncio.sleep(0.01)
    [flight] = rewriter._inflight.values()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0)
    assert flight.task.cancelled()
    assert rewriter._inflight == {}


# ---------------------------------------------------------------------------------------------- end to end


async def test_with_remote_engine_on_the_fake(fake: FakeUpstream) -> None:
    engine = RemoteEngine(fake.v1, "bpo")
    try:
        result = await Rewriter(engine).rewrite(chat(("user", "Write {a} poem")))
    finally:
        await engine.close()
    # The fake echoes the whole rendered prompt back, far more than 6 x 3 words: the guard keeps the original.
    assert result.skipped_reason == "too_long_output"
    [req] = fake.requests()
    assert req["path"] == "/v1/completions"
    assert req["body"]["prompt"] == bpo("Write {a} poem")
    assert (req["body"]["temperature"], req["body"]["top_p"]) == (0.6, 0.9)
    assert req["body"]["max_tokens"] == min(BPO_SAMPLING.max_tokens, 6 * 3 * 2 + 16)


async def test_with_remote_engine_accepting_a_rewrite(fake: FakeUpstream) -> None:
    engine = RemoteEngine(fake.v1, "bpo", extra_body={"fake": {"n_words": 12}})
    try:
        result = await Rewriter(engine).rewrite(chat(("user", "Write a short poem about the sea")))
    finally:
        await engine.close()
    assert result.rewritten == " ".join(f"w{i}" for i in range(12))
    assert result.messages[-1]["content"] == result.rewritten


async def test_token_budget_caps_long_rambles_but_not_long_prompts() -> None:
    rewriter = Rewriter(ScriptedEngine([GOOD]))
    assert rewriter.token_budget("one two three") == 6 * 3 * 2 + 16
    assert rewriter.token_budget(" ".join(["w"] * 500)) == BPO_SAMPLING.max_tokens  # the configured cap wins


# ---------------------------------------------------------------- what small helpers really do (hand-written outputs)


@pytest.mark.parametrize(
    ("original", "rewritten", "reason"),
    [
        # answers instead of rewriting: the question became a statement
        ("What is the capital of France?", "The capital of France is Paris, a city on the Seine.", "answered"),
        ("How do I train my dog to sit?", "Sure! First, hold a treat above your dog's nose and wait.", "answered"),
        ("Tell me a joke about cats please", "Here is a joke: why did the cat sit on the laptop?", "answered"),
        ("Is it safe to eat raw eggs?", "Yes, raw eggs are generally safe if they are pasteurised first.", "answered"),
        # a leaked chat template or role marker
        ("What is the capital of France?", "<|im_start|>user\nWhat is the capital city of France?", "template_leak"),
        ("Write a poem about the sea", "[INST] Write a short rhyming poem about the sea [/INST]", "template_leak"),
        ("Write a poem about the sea", "Write a poem about the sea.\nASSISTANT: The waves roll in", "template_leak"),
        # the BPO instruction echoed into the rewrite (seen from the trained adapter: "Name three colours.")
        ("Name three colours.", "Please help me improve this prompt to get a more helpful and harmless response."
         "\n\nName three colours.", "template_leak"),
        ("How do I improve this prompt for my essay?", "How do I improve this prompt for my essay, step by step?",
         None),
        # real rewrites pass
        ("What is the capital of France?", "What is the capital of France, and what is it known for?", None),
        ("What is the capital of France?", "Explain what the capital of France is and why it is the capital.", None),
        ("How do I train my dog to sit?", "Please give step-by-step, humane instructions to teach a dog to sit.", None),
        ("Tell me a joke about cats", "Write a short, family-friendly joke about cats.", None),
        ("Tell me a joke about cats", "A joke about cats that a child would enjoy.", None),  # no question asked
    ],
)
def test_guards_for_what_small_helpers_really_do(original: str, rewritten: str, reason: str | None) -> None:
    assert Rewriter(ScriptedEngine()).check(original, rewritten) == reason
