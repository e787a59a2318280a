"""LocalEngine with runtime ctranslate2 on tiny models: the torch runtime's outputs, batching, text, lifecycle.

Also the conversion cache (``models.local.ct2model``): a second start converts nothing; an adapter gets its
own conversion. Skipped where ``ctranslate2`` is not installed (it is not in the ``local`` extra).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from models.engine import ChatTurn, EngineError, EngineTimeout, SamplingParams
from models.local import LocalEngine
from models.local.ct2model import Ct2Model, conversion_key
from tests.models.local.conftest import MakeEngine
from tests.models.local.test_engine import GREEDY, PROMPTS, hf_greedy, wait_until
from tests.models.local.tiny import Script

pytest.importorskip("ctranslate2")

CT2 = {"runtime": "ctranslate2"}


async def test_greedy_matches_transformers_and_the_torch_runtime(tiny_dir: Path, make_engine: MakeEngine) -> None:
    engine = await make_engine(tiny_dir, **CT2)
    torch_engine = await make_engine(tiny_dir)
    assert isinstance(engine.loaded, Ct2Model)
    for prompt in PROMPTS[:3]:
        [result] = await engine.complete(prompt, GREEDY)
        text, prompt_tokens, completion_tokens = hf_greedy(tiny_dir, prompt, GREEDY.max_tokens)
        assert (result.text, result.prompt_tokens, result.completion_tokens) == (text, prompt_tokens, completion_tokens)
        assert [result] == await torch_engine.complete(prompt, GREEDY)


async def test_concurrent_requests_share_one_batch_and_match_one_at_a_time(
    tiny_dir: Path, make_engine: MakeEngine
) -> None:
    engine = await make_engine(tiny_dir, max_batch=16, **CT2)
    results = await asyncio.gather(*(engine.complete(prompt, GREEDY) for prompt in PROMPTS))
    assert engine.stats.prefill_batches <= 2
    assert engine.stats.max_rows >= 4
    for prompt, [result] in zip(PROMPTS, results, strict=True):
        assert [result] == await engine.complete(prompt, GREEDY)


async def test_stop_strings_max_tokens_and_streaming(tiny_dir: Path, make_engine: MakeEngine) -> None:
    engine = await make_engine(tiny_dir, **CT2)
    [full] = await engine.complete(PROMPTS[0], SamplingParams(max_tokens=40))
    stop = full.text[12:15]
    params = SamplingParams(max_tokens=40, stop=("never appears", stop))
    [result] = await engine.complete(PROMPTS[0], params)
    assert (result.text, result.finish_reason) == (full.text[: full.text.find(stop)], "stop")
    assert result.completion_tokens < full.completion_tokens
    deltas = [d async for d in engine.stream_complete(PROMPTS[0], params)]
    assert "".join(d.text for d in deltas) == result.text
    assert deltas[-1].finish_reason == "stop"
    [short] = await engine.complete(PROMPTS[0], SamplingParams(max_tokens=5))
    assert (short.finish_reason, short.completion_tokens) == ("length", 5)
    # Rows with different budgets in one batch each end at their own.
    mixed = await asyncio.gather(*(engine.complete(PROMPTS[1], SamplingParams(max_tokens=k)) for k in (3, 9)))
    assert [r[0].completion_tokens for r in mixed] == [3, 9]
    messages = [ChatTurn("system", "be brief"), ChatTurn("user", "the quick brown fox")]
    [whole] = await engine.chat(messages, GREEDY)
    streamed = [d async for d in engine.stream_chat(messages, GREEDY)]
    assert len(streamed) > 3
    assert "".join(d.text for d in streamed) == whole.text


async def test_eos_counts_and_deltas_never_split_a_character(script: Script, make_engine: MakeEngine) -> None:
    engine = await make_engine(script.path, **CT2)
    [result] = await engine.chat([ChatTurn("user", "hello")], SamplingParams(max_tokens=50))
    expected = (script.text, "stop", len(script.tokens) + 1)
    assert (result.text, result.finish_reason, result.completion_tokens) == expected
    deltas = [d async for d in engine.stream_chat([ChatTurn("user", "hi")], SamplingParams(max_tokens=50))]
    assert "".join(d.text for d in deltas) == script.text
    assert all("\ufffd" not in d.text for d in deltas)
    assert "🎉" in [d.text for d in deltas]


async def test_sampling_and_seeds(tiny_dir: Path, make_engine: MakeEngine) -> None:
    engine = await make_engine(tiny_dir, **CT2)
    torch_engine = await make_engine(tiny_dir)
    sampled = await engine.complete(PROMPTS[0], SamplingParams(max_tokens=20, temperature=1.0, top_p=0.9, n=3))
    assert [c.index for c in sampled] == [0, 1, 2]
    assert len({c.text for c in sampled}) > 1
    # Seeded sampling runs on the torch runtime (loaded on first use): its exact draws.
    seeded = SamplingParams(max_tokens=30, temperature=1.0, top_p=0.9, seed=7)
    first = await engine.complete(PROMPTS[0], seeded)
    assert first == await engine.complete(PROMPTS[0], seeded)
    assert first == await torch_engine.complete(PROMPTS[0], seeded)


async def test_timeout_and_cancellation_end_the_row(tiny_dir: Path, make_engine: MakeEngine) -> None:
    engine = await make_engine(tiny_dir, timeout_s=0.01, **CT2)  # the tiny model is fast here
    with pytest.raises(EngineTimeout):
        await engine.complete(PROMPTS[0], SamplingParams(max_tokens=400))
    await wait_until(lambda: engine.stats.active_rows == 0)
    assert engine.stats.generated_tokens < 400
    # a row counts as cancelled once it was generating: on a loaded machine the timeout may come first
    before = engine.stats.rows_cancelled
    assert before <= 1
    stream = engine.stream_complete(PROMPTS[0], SamplingParams(max_tokens=400), timeout_s=30)
    for _ in range(3):
        await anext(stream)
    await stream.aclose()
    await wait_until(lambda: engine.stats.active_rows == 0)
    assert engine.stats.rows_cancelled == before + 1
    assert len(await engine.complete(PROMPTS[0], GREEDY, timeout_s=30)) == 1


async def test_int8_runs_and_bad_settings(tiny_dir: Path, make_engine: MakeEngine) -> None:
    engine = await make_engine(tiny_dir, dtype="int8", **CT2)
    [result] = await engine.complete(PROMPTS[0], GREEDY)
    assert result.completion_tokens > 0  # int8 weights: its text may differ from float32's
    with pytest.raises(EngineError, match="dtype"):
        await make_engine(tiny_dir, dtype="bfloat16", **CT2)
    with pytest.raises(ValueError, match="runtime"):
        LocalEngine(str(tiny_dir), runtime="onnx")  # type: ignore[arg-type]
    with pytest.raises(EngineError, match="context"):
        await engine.complete("the " * 600, GREEDY)


@pytest.mark.filterwarnings("ignore::FutureWarning")  # peft calls a deprecated transformers helper
async def test_adapter_is_merged_and_conversions_are_cached(
    tiny_dir: Path, tmp_path: Path, make_engine: MakeEngine
) -> None:
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(1)
    base = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "o_proj"], init_lora_weights=False)
    peft_model = get_peft_model(base, config)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.mul_(20.0)
    peft_model.save_pretrained(tmp_path / "adapter")
    merged = tmp_path / "merged"
    peft_model.merge_and_unload().save_pretrained(merged)
    AutoTokenizer.from_pretrained(tiny_dir).save_pretrained(merged)

    cache = tmp_path / "cache"
    adapted = await make_engine(tiny_dir, adapter=tmp_path / "adapter", cache_dir=cache, **CT2)
    plain = await make_engine(tiny_dir, cache_dir=cache, **CT2)
    [with_adapter] = await adapted.complete(PROMPTS[0], GREEDY)
    assert with_adapter.text == hf_greedy(merged, PROMPTS[0], GREEDY.max_tokens)[0]
    assert with_adapter.text != (await plain.complete(PROMPTS[0], GREEDY))[0].text
    converted = sorted(p.name for p in (cache / "ctranslate2").iterdir() if p.is_dir())
    assert len(converted) == 2  # one per (model, adapter)
    again = await make_engine(tiny_dir, adapter=tmp_path / "adapter", cache_dir=cache, **CT2)
    assert isinstance(again.loaded, Ct2Model) and isinstance(adapted.loaded, Ct2Model)
    assert again.loaded.path == adapted.loaded.path
    assert sorted(p.name for p in (cache / "ctranslate2").iterdir() if p.is_dir()) == converted
    assert conversion_key(tiny_dir, None, "1") != conversion_key(tiny_dir, tmp_path / "adapter", "1")


async def test_close_fails_waiting_calls(tiny_dir: Path, make_engine: MakeEngine) -> None:
    engine = await make_engine(tiny_dir, max_batch=1, **CT2)
    stream = engine.stream_complete(PROMPTS[0], SamplingParams(max_tokens=500))
    await anext(stream)
    queued = asyncio.create_task(engine.complete(PROMPTS[1], GREEDY))
    await wait_until(lambda: engine.stats.waiting_requests == 1)
    await engine.close()
    with pytest.raises(EngineError, match="closed"):
        await queued
    with pytest.raises(EngineError, match="closed"):
        async for _ in stream:
            pass
