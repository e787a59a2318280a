"""LocalEngine on tiny local models: exact greedy, batching, sampling, stops, streaming, overload, cancellation."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from models.engine import (
    ChatTurn,
    Completion,
    Delta,
    Engine,
    EngineError,
    EngineOverloaded,
    EngineTimeout,
    SamplingParams,
)
from models.local import LocalEngine
from tests.models.local.conftest import MakeEngine
from tests.models.local.tiny import Script

PROMPTS = [
    "the quick brown fox",
    "please repeat the following text exactly as it is written: hello world",
    "a",
    "streaming sends every piece of text",
    "batching many requests together makes the engine faster, the quick brown fox jumps",
    "hello world, this is",
    "correction",
    "the lazy dog",
]
GREEDY = SamplingParams(max_tokens=24)


def hf_greedy(model_dir: Path, prompt: str, max_tokens: int) -> tuple[str, int, int]:
    """Reference: transformers' own generate (batch of one, no engine code involved)."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    inputs = tokenizer(prompt, return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=max_tokens, do_sample=False)
    new = out[0, inputs["input_ids"].shape[1] :].tolist()
    text = tokenizer.decode(new, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    return text, inputs["input_ids"].shape[1], len(new)


async def wait_until(condition: Callable[[], bool], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.01)


async def test_is_an_engine_and_greedy_matches_transformers_generate(tiny_dir: Path, make_engine: MakeEngine) -> None:
    engine = await make_engine(tiny_dir)
    assert isinstance(engine, Engine)
    assert engine.name == tiny_dir.name
    for prompt in PROMPTS[:3]:
        [result] = await engine.complete(prompt, GREEDY)
        text, prompt_tokens, completion_tokens = hf_greedy(tiny_dir, prompt, GREEDY.max_tokens)
        assert (result.text, result.prompt_tokens, result.completion_tokens) == (text, prompt_tokens, completion_tokens)


async def test_concurrent_requests_are_batched_and_match_one_at_a_time(tiny_dir: Path, make_engine: MakeEngine) -> None:
    batched = await make_engine(tiny_dir, max_batch=16)
    results = await asyncio.gather(*(batched.complete(prompt, GREEDY) for prompt in PROMPTS))
    assert batched.stats.prefill_batches <= 2
    assert batched.stats.max_rows >= 4
    assert batched.stats.decode_steps <= 2 * GREEDY.max_tokens
    single = await make_engine(tiny_dir, max_batch=1)
    for prompt, [result] in zip(PROMPTS, results, strict=True):
        assert [result] == await single.complete(prompt, GREEDY)
    assert single.stats.prefill_batches == len(PROMPTS)


async def test_a_request_joins_a_running_batch(tiny_dir: Path, make_engine: MakeEngine) -> None:
    engine = await make_engine(tiny_dir)
    long = SamplingParams(max_tokens=80)
    stream = engine.stream_complete(PROMPTS[0], long)
    first = await anext(stream)
    late = await engine.complete(PROMPTS[1], GREEDY)  # finishes while the long one still runs
    assert engine.stats.active_rows == 1
    rest = [delta async for delta in stream]
    assert engine.stats.prefill_batches == 2
    assert engine.stats.max_rows == 2
    alone = await make_engine(tiny_dir)
    assert late == await alone.complete(PROMPTS[1], GREEDY)
    [expected] = await alone.complete(PROMPTS[0], long)
    assert first.text + "".join(delta.text for delta in rest) == expected.text


async def test_seed_makes_sampling_reproducible(tiny_dir: Path, make_engine: MakeEngine) -> None:
    engine = await make_engine(tiny_dir)
    params = SamplingParams(max_tokens=30, temperature=1.0, top_p=0.9, seed=7)
    first = await engine.complete(PROMPTS[0], params)
    # Same seed while sharing a batch with other work: same draws.
    again, _ = await asyncio.gather(engine.complete(PROMPTS[0], params), engine.complete(PROMPTS[1], GREEDY))
    assert first == again
    other = await engine.complete(PROMPTS[0], SamplingParams(max_tokens=30, temperature=1.0, top_p=0.9, seed=8))
    assert other[0].text != first[0].text


async def test_n_choices(tiny_dir: Path, make_engine: MakeEngine) -> None:
    engine = await make_engine(tiny_dir)
    sampled = await engine.complete(PROMPTS[0], SamplingParams(max_tokens=20, temperature=1.0, n=3, seed=1))
    assert [c.index for c in sampled] == [0, 1, 2]
    assert len({c.prompt_tokens for c in sampled}) == 1
    assert len({c.text for c in sampled}) > 1
    assert engine.stats.prefill_batches == 1  # the choices share one prefill
    greedy = await engine.complete(PROMPTS[0], SamplingParams(max_tokens=20, n=2))
    assert greedy[0].text == greedy[1].text
    streamed = [
        d async for d in engine.stream_complete(PROMPTS[0], SamplingParams(max_tokens=20, temperature=1.0, n=3, seed=1))
    ]
    for choice in sampled:
        assert "".join(d.text for d in streamed if d.index == choice.index) == choice.text


async def test_stop_strings_cut_the_text(tiny_dir: Path, make_engine: MakeEngine) -> None:
    engine = await make_engine(tiny_dir)
    [full] = await engine.complete(PROMPTS[0], SamplingParams(max_tokens=40))
    stop = full.text[12:15]
    cut = full.text[: full.text.find(stop)]
    params = SamplingParams(max_tokens=40, stop=("never appears", stop))
    [result] = await engine.complete(PROMPTS[0], params)
    assert (result.text, result.finish_reason) == (cut, "stop")
    assert result.completion_tokens < full.completion_tokens
    deltas = [d async for d in engine.stream_complete(PROMPTS[0], params)]
    assert "".join(d.text for d in deltas) == cut
    assert all(stop not in d.text for d in deltas)
    assert deltas[-1].finish_reason == "stop"


async def test_max_tokens_ends_with_length(tiny_dir: Path, make_engine: MakeEngine) -> None:
    engine = await make_engine(tiny_dir)
    [result] = await engine.complete(PROMPTS[0], SamplingParams(max_tokens=5))
    assert (result.finish_reason, result.completion_tokens) == ("length", 5)


async def test_eos_ends_with_stop_and_counts_exact(script: Script, make_engine: MakeEngine) -> None:
    engine = await make_engine(script.path)
    [result] = await engine.chat([ChatTurn("user", "hello")], SamplingParams(max_tokens=50))
    tokenizer = AutoTokenizer.from_pretrained(script.path)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hello"}], add_generation_prompt=True, tokenize=False
    )
    assert prompt == "<|user|>hello<|assistant|>"
    assert result == Completion(
        text=script.text,
        finish_reason="stop",
        prompt_tokens=len(tokenizer(prompt, add_special_tokens=False)["input_ids"]),
        completion_tokens=len(script.tokens) + 1,  # the EOS token counts, as in OpenAI-compatible servers
    )


async def test_streamed_deltas_never_split_a_character(script: Script, make_engine: MakeEngine) -> None:
    engine = await make_engine(script.path)
    deltas = [d async for d in engine.stream_chat([ChatTurn("user", "hi")], SamplingParams(max_tokens=50))]
    assert "".join(d.text for d in deltas) == script.text
    assert all("\ufffd" not in d.text for d in deltas)
    assert "🎉" in [d.text for d in deltas]  # four byte tokens, one delta
    assert [d.finish_reason for d in deltas[:-1]] == [None] * (len(deltas) - 1)
    last = deltas[-1]
    assert (last.finish_reason, last.completion_tokens) == ("stop", len(script.tokens) + 1)
    assert last.prompt_tokens is not None and last.prompt_tokens > 0


async def test_streaming_adds_up_to_the_completion(tiny_dir: Path, make_engine: MakeEngine) -> None:
    engine = await make_engine(tiny_dir)
    messages = [ChatTurn("system", "be brief"), ChatTurn("user", "the quick brown fox")]
    [whole] = await engine.chat(messages, GREEDY)
    deltas: list[Delta] = [d async for d in engine.stream_chat(messages, GREEDY)]
    assert len(deltas) > 3
    assert "".join(d.text for d in deltas) == whole.text
    assert (deltas[-1].prompt_tokens, deltas[-1].completion_tokens) == (whole.prompt_tokens, whole.completion_tokens)


async def test_full_queue_raises_overloaded_at_once(tiny_dir: Path, make_engine: MakeEngine) -> None:
    engine = await make_engine(tiny_dir, max_batch=1, max_queue=2)
    running = engine.stream_complete(PROMPTS[0], SamplingParams(max_tokens=400))
    await anext(running)  # it holds the only batch slot now
    waiting = [asyncio.create_task(engine.complete(p, GREEDY)) for p in PROMPTS[1:3]]
    await wait_until(lambda: engine.stats.waiting_requests == 2)
    started = time.monotonic()
    with pytest.raises(EngineOverloaded):
        await engine.complete(PROMPTS[3], GREEDY)
    assert time.monotonic() - started < 0.5
    await running.aclose()  # the slot frees: the waiting two are served
    assert all(len(result) == 1 for result in await asyncio.gather(*waiting))


async def test_timeout_raises_and_drops_the_row(tiny_dir: Path, make_engine: MakeEngine) -> None:
    engine = await make_engine(tiny_dir, timeout_s=0.2)
    with pytest.raises(EngineTimeout):
        await engine.complete(PROMPTS[0], SamplingParams(max_tokens=500))
    await wait_until(lambda: engine.stats.active_rows == 0)
    assert engine.stats.rows_cancelled == 1
    assert engine.stats.generated_tokens < 500
    with pytest.raises(EngineTimeout):  # a per-call deadline overrides the engine's
        await engine.complete(PROMPTS[0], SamplingParams(max_tokens=500), timeout_s=0.05)
    assert len(await engine.complete(PROMPTS[0], GREEDY, timeout_s=30)) == 1


async def test_cancelled_callers_leave_the_batch(tiny_dir: Path, make_engine: MakeEngine) -> None:
    engine = await make_engine(tiny_dir)
    stream = engine.stream_complete(PROMPTS[0], SamplingParams(max_tokens=500))
    for _ in range(3):
        await anext(stream)
    await stream.aclose()
    await wait_until(lambda: engine.stats.active_rows == 0)
    task = asyncio.create_task(engine.complete(PROMPTS[1], SamplingParams(max_tokens=500)))
    await wait_until(lambda: engine.stats.active_rows == 1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await wait_until(lambda: engine.stats.active_rows == 0)
    assert engine.stats.rows_cancelled == 2
    assert engine.stats.generated_tokens < 500


async def test_prompt_lookup_gives_exactly_the_greedy_output(tiny_dir: Path, make_engine: MakeEngine) -> None:
    plain = await make_engine(tiny_dir)
    lookup = await make_engine(tiny_dir, prompt_lookup_num_tokens=10)
    params = SamplingParams(max_tokens=60)
    for prompt in PROMPTS[:4]:
        assert await lookup.complete(prompt, params) == await plain.complete(prompt, params)
    batched = await asyncio.gather(*(lookup.complete(p, params) for p in PROMPTS[:4]))  # drafts in a batch of 4
    assert batched == [await plain.complete(p, params) for p in PROMPTS[:4]]
    assert lookup.stats.lookup_proposed > 0
    streamed = [d async for d in lookup.stream_complete(PROMPTS[1], params)]
    assert "".join(d.text for d in streamed) == (await plain.complete(PROMPTS[1], params))[0].text


async def test_prompt_lookup_accepts_copied_text(script: Script, make_engine: MakeEngine) -> None:
    # The scripted model writes the script; with the script already in the prompt, drafts are accepted.
    plain = await make_engine(script.path)
    lookup = await make_engine(script.path)
    messages = [ChatTurn("user", f"Repeat: {script.text}")]
    params = SamplingParams(max_tokens=50)
    expected = await plain.chat(messages, params)
    assert await lookup.chat(messages, params, prompt_lookup=True) == expected
    assert lookup.stats.lookup_accepted >= len(script.tokens) // 2
    assert lookup.stats.decode_steps < plain.stats.decode_steps


@pytest.mark.filterwarnings("ignore::FutureWarning")  # peft calls a deprecated transformers helper
async def test_lora_adapter_is_applied(tiny_dir: Path, tmp_path: Path, make_engine: MakeEngine) -> None:
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(1)
    base = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "o_proj"], init_lora_weights=False)
    peft_model = get_peft_model(base, config)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.mul_(20.0)  # make the adapter change greedy choices
    peft_model.save_pretrained(tmp_path / "adapter")
    merged = tmp_path / "merged"
    peft_model.merge_and_unload().save_pretrained(merged)
    AutoTokenizer.from_pretrained(tiny_dir).save_pretrained(merged)

    adapted = await make_engine(tiny_dir, adapter=tmp_path / "adapter")
    base_engine = await make_engine(tiny_dir)
    [with_adapter] = await adapted.complete(PROMPTS[0], GREEDY)
    text, _, _ = hf_greedy(merged, PROMPTS[0], GREEDY.max_tokens)
    assert with_adapter.text == text
    assert with_adapter.text != (await base_engine.complete(PROMPTS[0], GREEDY))[0].text


async def test_bad_requests_and_lifecycle(tiny_dir: Path, tmp_path: Path, make_engine: MakeEngine) -> None:
    idle = LocalEngine(str(tiny_dir))
    with pytest.raises(EngineError, match="not started"):
        await idle.complete("x", GREEDY)
    engine = await make_engine(tiny_dir)
    with pytest.raises(EngineError, match="context"):
        await engine.complete("the " * 600, GREEDY)
    for bad in (SamplingParams(n=0), SamplingParams(max_tokens=0), SamplingParams(top_p=0.0)):
        with pytest.raises(EngineError):
            await engine.complete("x", bad)
    one_slot = await make_engine(tiny_dir, max_batch=1)
    stream = one_slot.stream_complete(PROMPTS[0], SamplingParams(max_tokens=500))
    await anext(stream)
    queued = asyncio.create_task(one_slot.complete(PROMPTS[1], GREEDY))
    await wait_until(lambda: one_slot.stats.waiting_requests == 1)
    await one_slot.close()
    with pytest.raises(EngineError, match="closed"):
        async for _ in stream:
            pass
    with pytest.raises(EngineError, match="closed"):
        await queued
    with pytest.raises(EngineError, match="not started"):
        await one_slot.complete("x", GREEDY)


async def test_prefill_token_budget_and_oversized_n(tiny_dir: Path, make_engine: MakeEngine) -> None:
    engine = await make_engine(tiny_dir, max_prefill_tokens=24, max_batch=2)
    reference = await make_engine(tiny_dir)
    prompts = PROMPTS[:4]
    results = await asyncio.gather(*(engine.complete(p, GREEDY) for p in prompts))
    assert results == [await reference.complete(p, GREEDY) for p in prompts]
    assert engine.stats.prefill_batches >= 3  # the budget and the batch size split the admissions
    # n larger than max_batch still runs (alone), rather than waiting forever (the gateway refuses such an n
    # with a 400 naming this limit).
    assert engine.max_batch == 2
    choices = await engine.complete(PROMPTS[0], SamplingParams(max_tokens=8, n=3))
    assert len({c.text for c in choices}) == 1 and len(choices) == 3
