"""Runtimes for the embedded engine, side by side on the built-in model's weights (CPU, greedy, same threads).

Candidates, all on the same fp32 Hugging Face weights (the built-in GGUF de-quantized by ``models.local``):

- ``hf-generate``: plain ``transformers`` ``model.generate`` (fp32, dynamic cache): the reference;
- ``hf-static``: the same with ``cache_implementation="static"`` (a preallocated KV cache, no compile);
- ``engine-torch``: today's ``LocalEngine`` (``models/local``, runtime ``torch``) through its async interface;
- ``engine-torch-bf16``: the same with ``dtype="bfloat16"``;
- ``engine-ct2``: the same ``LocalEngine`` with runtime ``ctranslate2`` (fp32, and ``int8`` weights);
- ``ct2-float32`` / ``ct2-int8``: CTranslate2 directly (``generate_tokens`` for one, ``generate_batch`` for 16);
- ``ortgenai-fp32`` / ``ortgenai-int4``: ONNX Runtime GenAI (its model builder's export, then its ``Generator``;
  only where ``onnxruntime-genai``, ``onnx`` and ``onnx_ir`` are installed).

For every candidate: tokens/s for one request and for ``--concurrency`` concurrent (batched) requests, the
time to the first token of one request, its load (and conversion) time, how many of ``--prompts`` greedy
outputs match the reference token for token, and how much of the reference text they reproduce before the
first difference. Measurements are interleaved: every round runs each candidate once; the table reports the
median round and the median of per-round ratios, so a noisy neighbour hurts them all alike.

Not a candidate: ``torch.compile`` (measured: 447 s of compilation on a busy 2-core machine, for no gain).
This CPU lacks ``avx512_bf16``/AMX, so ``engine-torch-bf16`` runs emulated bf16. Prints a table, then one
JSON line. Needs the ``local`` extra, ``ctranslate2`` and the built-in model.

    python benchmarks/engine_candidates.py [--threads 2] [--rounds 3] [--max-tokens 64] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.generation.streamers import BaseStreamer

from benchmarks.local_engine import TOPICS  # the same prompts as the engine's own benchmark
from models.engine import ChatTurn, SamplingParams
from models.local import LocalEngine
from models.local.source import resolve_source

Ids = list[int]


#: A completion: its token ids (or its text, from the engine), and how many tokens it has.
Output = tuple[Ids | str, int]


@dataclass
class Candidate:
    """One runtime: ``one(ids) -> (output, ttft_s)`` and ``batch(list of ids) -> outputs``."""

    name: str
    one: Callable[[Ids], tuple[Output, float]]
    batch: Callable[[list[Ids]], list[Output]]
    load_s: float
    one_tok_s: list[float] = field(default_factory=list)
    batch_tok_s: list[float] = field(default_factory=list)
    ttft_s: list[float] = field(default_factory=list)
    matches: int = 0
    #: Mean share of the reference's characters each output reproduces before its first difference.
    agreement: float = 0.0


class _FirstToken(BaseStreamer):  # type: ignore[misc]
    """Records when ``generate`` hands out its first new token (the first ``put`` is the prompt)."""

    def __init__(self) -> None:
        self.calls = 0
        self.first = 0.0

    def put(self, value: torch.Tensor) -> None:
        self.calls += 1
        if self.calls == 2:
            self.first = time.perf_counter()

    def end(self) -> None:
        pass


def hf_candidate(name: str, model: Any, pad: int, max_tokens: int, **options: Any) -> Candidate:
    def one(ids: Ids) -> tuple[Output, float]:
        streamer = _FirstToken()
        started = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(
                torch.tensor([ids]), max_new_tokens=max_tokens, do_sample=False, streamer=streamer, **options
            )
        tokens = out[0, len(ids) :].tolist()
        return (tokens, len(tokens)), streamer.first - started

    def batch(prompts: list[Ids]) -> list[Output]:
        width = max(len(ids) for ids in prompts)
        input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids in prompts])
        mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in prompts])
        with torch.inference_mode():
            out = model.generate(
                input_ids, attention_mask=mask, max_new_tokens=max_tokens, do_sample=False, pad_token_id=pad, **options
            )
        rows = [_until_eos(row[width:].tolist(), pad) for row in out]
        return [(row, len(row)) for row in rows]

    return Candidate(name, one, batch, 0.0)


def _until_eos(tokens: Ids, eos: int) -> Ids:
    return tokens[: tokens.index(eos) + 1] if eos in tokens else tokens


def ct2_candidate(name: str, model_dir: Path, tokenizer: Any, quantization: str, threads: int, eos: int) -> Candidate:
    import ctranslate2
    from ctranslate2.converters import TransformersConverter

    started = time.perf_counter()
    out = Path(tempfile.mkdtemp(prefix=f"ct2-{quantization}-"))
    TransformersConverter(str(model_dir)).convert(str(out), quantization=quantization, force=True)
    generator = ctranslate2.Generator(str(out), device="cpu", intra_threads=threads, inter_threads=1)
    load_s = time.perf_counter() - started
    max_tokens = 0

    def one(ids: Ids) -> tuple[Output, float]:
        started = time.perf_counter()
        first = 0.0
        tokens: Ids = []
        for step in generator.generate_tokens(
            tokenizer.convert_ids_to_tokens(ids), max_length=max_tokens, sampling_topk=1, end_token=[eos]
        ):
            if not tokens:
                first = time.perf_counter() - started
            tokens.append(step.token_id)
        return (tokens, len(tokens)), first

    def batch(prompts: list[Ids]) -> list[Output]:
        results = generator.generate_batch(
            [tokenizer.convert_ids_to_tokens(ids) for ids in prompts],
            max_length=max_tokens,
            sampling_topk=1,
            end_token=[eos],
            return_end_token=True,
            include_prompt_in_result=False,
        )
        rows = [list(result.sequences_ids[0]) for result in results]
        return [(row, len(row)) for row in rows]

    candidate = Candidate(name, one, batch, load_s)

    def set_max(value: int) -> None:
        nonlocal max_tokens
        max_tokens = value

    candidate.__dict__["set_max"] = set_max
    candidate.__dict__["release"] = generator.unload_model  # before exit: see models.local.ct2model
    return candidate


def ortgenai_candidate(
    name: str, model_dir: Path, precision: str, threads: int, pad: int, max_tokens: int
) -> Candidate:
    """ONNX Runtime GenAI: its model builder exports the HF directory (fp32, or int4 weights), then its Generator."""
    import subprocess

    import onnxruntime_genai as og

    started = time.perf_counter()
    out = Path(tempfile.mkdtemp(prefix=f"ortgenai-{precision}-"))
    subprocess.run(
        [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(model_dir), "-o", str(out),
         "-p", precision, "-e", "cpu", "-c", str(out / "cache")],
        check=True, capture_output=True,
    )  # fmt: skip
    config = json.loads((out / "genai_config.json").read_text())
    config["model"]["decoder"]["session_options"]["intra_op_num_threads"] = threads
    (out / "genai_config.json").write_text(json.dumps(config))
    model = og.Model(str(out))
    load_s = time.perf_counter() - started

    def run(prompts: list[Ids]) -> tuple[list[Ids], float]:
        width = max(len(ids) for ids in prompts)
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=width + max_tokens, do_sample=False, batch_size=len(prompts))
        generator = og.Generator(model, params)
        started = time.perf_counter()
        generator.append_tokens([[pad] * (width - len(ids)) + ids for ids in prompts])
        rows: list[Ids] = [[] for _ in prompts]
        first = 0.0
        while not generator.is_done():
            generator.generate_next_token()
            if not first:
                first = time.perf_counter() - started
            for row, token in zip(rows, generator.get_next_tokens(), strict=True):
                if not row or row[-1] != pad:
                    row.append(int(token))
        return rows, first

    def one(ids: Ids) -> tuple[Output, float]:
        [tokens], first = run([ids])
        return (tokens, len(tokens)), first

    def batch(prompts: list[Ids]) -> list[Output]:
        rows, _ = run(prompts)
        return [(row, len(row)) for row in rows]

    return Candidate(name, one, batch, load_s)


def engine_candidate(
    name: str, loop: asyncio.AbstractEventLoop, tokenizer: Any, max_tokens: int, threads: int, **options: Any
) -> Candidate:
    started = time.perf_counter()
    engine = LocalEngine(num_threads=threads, max_batch=16, **options)
    loop.run_until_complete(engine.start())
    load_s = time.perf_counter() - started
    params = SamplingParams(max_tokens=max_tokens)

    def turns(ids: Ids) -> list[ChatTurn]:
        return [ChatTurn("user", _question(tokenizer, ids))]

    async def stream(ids: Ids) -> tuple[Output, float]:
        started = time.perf_counter()
        first = 0.0
        text = ""
        count = 0
        async for delta in engine.stream_chat(turns(ids), params):
            if not first and delta.text:
                first = time.perf_counter() - started
            text += delta.text
            count = delta.completion_tokens or count
        return (text, count), first

    async def gather(prompts: list[Ids]) -> list[Output]:
        results = await asyncio.gather(*(engine.chat(turns(ids), params) for ids in prompts))
        return [(r[0].text, r[0].completion_tokens) for r in results]

    candidate = Candidate(
        name, lambda ids: loop.run_until_complete(stream(ids)), lambda p: loop.run_until_complete(gather(p)), load_s
    )
    candidate.__dict__["engine"] = engine
    return candidate


_QUESTIONS: dict[tuple[int, ...], str] = {}


def _question(tokenizer: Any, ids: Ids) -> str:
    return _QUESTIONS[tuple(ids)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for every candidate")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--prompts", type=int, default=8, help="prompts whose greedy outputs are compared")
    parser.add_argument("--only", nargs="*", default=None, help="candidate names to run (default: all)")
    parser.add_argument("--out", default=None, help="also write the JSON line to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    source = resolve_source("builtin:smollm2-135m-instruct")
    tokenizer = AutoTokenizer.from_pretrained(str(source.path))
    eos = int(tokenizer.eos_token_id)
    prompts: list[Ids] = []
    for i in range(max(args.concurrency, args.prompts)):
        question = f"Write a detailed essay about {TOPICS[i % len(TOPICS)]}."
        text = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                             tokenize=False)  # fmt: skip
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        _QUESTIONS[tuple(ids)] = question
        prompts.append(ids)

    started = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(str(source.path), dtype=torch.float32).eval()
    hf_load = time.perf_counter() - started
    wanted = set(args.only) if args.only else None
    loop = asyncio.new_event_loop()
    candidates: list[Candidate] = []

    def want(name: str) -> bool:
        return wanted is None or name in wanted

    if want("hf-generate"):
        candidates.append(hf_candidate("hf-generate", model, eos, args.max_tokens))
    if want("hf-static"):
        candidates.append(hf_candidate("hf-static", model, eos, args.max_tokens, cache_implementation="static"))
    for candidate in candidates:
        candidate.load_s = hf_load
    if want("engine-torch"):
        candidates.append(engine_candidate("engine-torch", loop, tokenizer, args.max_tokens, args.threads))
    if want("engine-torch-bf16"):
        candidates.append(engine_candidate("engine-torch-bf16", loop, tokenizer, args.max_tokens, args.threads,
                                           dtype="bfloat16"))  # fmt: skip
    for runtime_dtype in ("float32", "int8"):
        name = f"engine-ct2-{runtime_dtype}"
        if want(name):
            candidates.append(engine_candidate(name, loop, tokenizer, args.max_tokens, args.threads,
                                               runtime="ctranslate2", dtype=runtime_dtype))  # fmt: skip
    for quantization in ("float32", "int8"):
        name = f"ct2-{quantization}"
        if want(name):
            candidate = ct2_candidate(name, source.path, tokenizer, quantization, args.threads, eos)
            candidate.__dict__["set_max"](args.max_tokens)
            candidates.append(candidate)

    for precision in ("fp32", "int4"):
        name = f"ortgenai-{precision}"
        if want(name) and importlib.util.find_spec("onnxruntime_genai") is not None:
            candidates.append(ortgenai_candidate(name, source.path, precision, args.threads, eos, args.max_tokens))

    # The reference: plain generate, one prompt at a time.
    reference = [hf_candidate("ref", model, eos, args.max_tokens).one(ids)[0][0] for ids in prompts[: args.prompts]]
    for candidate in candidates:  # warm-up, and the output comparison
        got = [candidate.one(ids)[0][0] for ids in prompts[: args.prompts]]
        candidate.matches = sum(_same(tokenizer, a, b) for a, b in zip(got, reference, strict=True))
        candidate.agreement = statistics.mean(_agreement(tokenizer, a, b) for a, b in zip(got, reference, strict=True))

    batch_prompts = prompts[: args.concurrency]
    for round_ in range(args.rounds):
        for candidate in candidates:
            ids = prompts[round_ % len(prompts)]
            started = time.perf_counter()
            (_, count), ttft = candidate.one(ids)
            candidate.one_tok_s.append(count / (time.perf_counter() - started))
            candidate.ttft_s.append(ttft)
            started = time.perf_counter()
            rows = candidate.batch(batch_prompts)
            produced = sum(count for _, count in rows)
            candidate.batch_tok_s.append(produced / (time.perf_counter() - started))
            print(f"  round {round_ + 1} {candidate.name:<18} 1: {candidate.one_tok_s[-1]:6.1f} tok/s  "
                  f"{args.concurrency}: {candidate.batch_tok_s[-1]:6.1f} tok/s", flush=True)  # fmt: skip

    for candidate in candidates:
        engine = candidate.__dict__.get("engine")
        if isinstance(engine, LocalEngine):
            loop.run_until_complete(engine.close())
        release = candidate.__dict__.get("release")
        if callable(release):
            release()
    loop.close()

    base = next((c for c in candidates if c.name == "hf-generate"), None)
    today = next((c for c in candidates if c.name == "engine-torch"), None)
    rows_out: list[dict[str, object]] = []
    print()
    print(f"{'candidate':<18} | {'1 req tok/s':>11} | {'x hf':>5} | {args.concurrency:>2} req tok/s | "
          f"{'x today':>7} | {'TTFT ms':>7} | {'load s':>6} | identical | agree")  # fmt: skip
    for candidate in candidates:
        one = statistics.median(candidate.one_tok_s)
        many = statistics.median(candidate.batch_tok_s)
        # Ratios within each round (same neighbours), then their median: steadier than a ratio of medians.
        vs_hf = _median_ratio(candidate.one_tok_s, base.one_tok_s) if base else float("nan")
        vs_today = _median_ratio(candidate.batch_tok_s, today.batch_tok_s) if today else float("nan")
        ttft = statistics.median(candidate.ttft_s) * 1000
        print(f"{candidate.name:<18} | {one:>11.1f} | {vs_hf:>4.2f}x | {many:>11.1f} | {vs_today:>6.2f}x | "
              f"{ttft:>7.0f} | {candidate.load_s:>6.1f} | {candidate.matches}/{args.prompts:<7} | "
              f"{candidate.agreement:>4.0%}")  # fmt: skip
        rows_out.append({"candidate": candidate.name, "one_tok_s": one, "batch_tok_s": many, "one_vs_hf": vs_hf,
                         "batch_vs_engine_torch": vs_today, "ttft_ms": ttft, "load_s": candidate.load_s,
                         "identical": candidate.matches, "agreement": candidate.agreement,
                         "one_rounds": candidate.one_tok_s, "batch_rounds": candidate.batch_tok_s})  # fmt: skip
    summary = {
        "benchmark": "engine_candidates",
        "cpu_cores": os.cpu_count(),
        "threads": args.threads,
        "rounds": args.rounds,
        "max_tokens": args.max_tokens,
        "concurrency": args.concurrency,
        "prompts_compared": args.prompts,
        "machine": platform.machine(),
        "torch": torch.__version__,
        "candidates": rows_out,
    }
    line = json.dumps(_rounded(summary))
    print(line)
    if args.out:
        Path(args.out).write_text(line + "\n")


def _same(tokenizer: Any, got: Ids | str, want: Ids | str) -> bool:
    assert isinstance(want, list)
    if isinstance(got, str):  # the engine answers text: compare it with the reference's text
        return got == tokenizer.decode(want, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    return _until_eos(got, tokenizer.eos_token_id) == _until_eos(want, tokenizer.eos_token_id)


def _median_ratio(mine: list[float], theirs: list[float]) -> float:
    return statistics.median(a / b for a, b in zip(mine, theirs, strict=True))


def _agreement(tokenizer: Any, got: Ids | str, want: Ids | str) -> float:
    """The share of the reference text ``got`` reproduces before the first differing character."""
    assert isinstance(want, list)
    want_text = tokenizer.decode(want, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    got_text = got if isinstance(got, str) else tokenizer.decode(got, skip_special_tokens=True,
                                                                  clean_up_tokenization_spaces=False)  # fmt: skip
    same = 0
    for a, b in zip(got_text, want_text, strict=False):
        if a != b:
            break
        same += 1
    return same / max(1, len(want_text))


def _rounded(value: object) -> object:
    if isinstance(value, float):
        return round(value, 3)
    if isinstance(value, dict):
        return {key: _rounded(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_rounded(item) for item in value]
    return value


if __name__ == "__main__":
    main()
