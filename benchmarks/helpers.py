"""Latency each arm adds: the embedded default (SmolLM2 in-process for backend and helpers) and remote helpers.

Two set-ups, each a real ``aligngate serve`` process driven over HTTP, arms interleaved request by request
so that machine noise hits them alike:

* ``embedded``: ``aligngate serve`` with no config; every request is greedy with a small ``max_tokens`` and the
  helpers' own budgets are capped by environment overrides, so a run takes minutes, not hours.
* ``embedded-zero-shot``: the same with the zero-shot helpers (the embedded default without its helpers' shipped
  adapters, written as a config file), to compare with the trained ones in the same run.
* ``remote``: the backend and both helpers are fake OpenAI-compatible servers (their own processes) that
  answer at once: what is left is the pipeline's own cost (parsing, re-serialising, the extra HTTP calls).

For each arm: median and p90 end-to-end latency, the median added over ``control``, the helpers' own time
(``helper_ms`` from the trace), and how often each helper kept the original (guards). Prints a table, writes
``benchmarks/results/helpers.md`` and ends with one JSON line. The in-process engine's batching and
prompt-lookup speed-ups are measured by ``benchmarks/local_engine.py``.

    python benchmarks/helpers.py [--setup embedded embedded-zero-shot remote] [--rounds 6] [--max-tokens 48]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

from procs import ROOT, Proc, start_fake, start_gateway

RESULTS = ROOT / "benchmarks" / "results"
ARMS = ("control", "rewrite", "align", "rewrite+align")
PROMPTS = [
    "Give me three tips for staying focused while studying.",
    "What is the capital of Australia?",
    "Explain what a rainbow is to a child.",
    "Write a short thank-you note to a neighbour.",
    "How do I boil an egg?",
    "Name two benefits of regular exercise.",
    "What should I pack for a day at the beach?",
    "Summarise why sleep matters in one sentence.",
]


def _root(proc: Proc) -> str:
    return proc.base_url.removesuffix("/v1")


def call(url: str, model: str, prompt: str, arm: str, max_tokens: int) -> tuple[float, dict[str, Any]]:
    body = json.dumps({
        "model": model, "max_tokens": max_tokens, "temperature": 0,
        "messages": [{"role": "user", "content": prompt}],
    }).encode()
    req = urllib.request.Request(
        url + "/v1/chat/completions", data=body,
        headers={"Content-Type": "application/json", "X-Aligngate-Arm": arm, "X-Aligngate-Trace": "1"},
    )
    t = time.perf_counter()
    with urllib.request.urlopen(req, timeout=600) as r:
        data = json.loads(r.read())
    return time.perf_counter() - t, data


def measure(url: str, model: str, rounds: int, max_tokens: int) -> dict[str, dict[str, Any]]:
    lat: dict[str, list[float]] = {a: [] for a in ARMS}
    helper_ms: dict[str, dict[str, list[float]]] = {a: {"rewriter": [], "aligner": []} for a in ARMS}
    skips: dict[str, Counter[str]] = {a: Counter() for a in ARMS}
    for arm in ARMS:  # warm-up: caches, first-call costs
        call(url, model, "Hello!", arm, 8)
    for r in range(rounds):
        prompt = PROMPTS[r % len(PROMPTS)]
        if r >= len(PROMPTS):  # never a rewrite-cache hit: every request pays for its helper calls
            prompt = f"{prompt} (take {r // len(PROMPTS) + 1})"
        order = ARMS if r % 2 == 0 else tuple(reversed(ARMS))
        for arm in order:
            seconds, data = call(url, model, prompt, arm, max_tokens)
            lat[arm].append(seconds)
            trace = data.get("aligngate") or {}
            for helper in ("rewriter", "aligner"):
                ms = (trace.get("helper_ms") or {}).get(helper)
                if ms is not None:
                    helper_ms[arm][helper].append(ms)
            for key in ("rewriter_skipped", "aligner_skipped"):
                if trace.get(key):
                    skips[arm][f"{key.split('_')[0]}:{trace[key]}"] += 1
    control = statistics.median(lat["control"])
    out: dict[str, dict[str, Any]] = {}
    for arm in ARMS:
        xs = sorted(lat[arm])
        out[arm] = {
            "p50_s": statistics.median(xs),
            "p90_s": xs[min(len(xs) - 1, round(0.9 * (len(xs) - 1)))],
            "added_p50_s": statistics.median(xs) - control,
            "rewriter_ms_p50": statistics.median(helper_ms[arm]["rewriter"]) if helper_ms[arm]["rewriter"] else None,
            "aligner_ms_p50": statistics.median(helper_ms[arm]["aligner"]) if helper_ms[arm]["aligner"] else None,
            "kept_original": dict(skips[arm]),
            "n": len(xs),
        }
    return out


def remote_config(backend: str, helper_rewriter: str, helper_aligner: str) -> str:
    return (
        "backends:\n  - name: bench-model\n    urls: [" + backend + "]\n"
        "helpers:\n"
        f"  rewriter: {{url: {helper_rewriter}, model: bpo, template: bpo}}\n"
        f"  aligner: {{url: {helper_aligner}, model: aligner, template: aligner-v1}}\n"
    )


def zero_shot_config() -> str:
    """The embedded default with the helpers' adapters removed (the zero-shot helpers), as YAML."""
    import yaml

    from gateway.config import EMBEDDED_DEFAULT

    config = copy.deepcopy(EMBEDDED_DEFAULT)
    for helper in config["helpers"].values():
        if isinstance(helper, dict):
            helper.get("local", {}).pop("adapter", None)
    return str(yaml.safe_dump(config))


def table(name: str, res: dict[str, dict[str, Any]], unit: float, unit_name: str) -> list[str]:
    header = (
        f"| arm | p50 ({unit_name}) | p90 ({unit_name}) | added p50 ({unit_name}) "
        "| rewriter p50 (ms) | aligner p50 (ms) | helper kept the original |"
    )
    lines = [f"### {name}", "", header, "|---|---:|---:|---:|---:|---:|---|"]
    for arm, r in res.items():
        rw = "-" if r["rewriter_ms_p50"] is None else f"{r['rewriter_ms_p50']:.1f}"
        al = "-" if r["aligner_ms_p50"] is None else f"{r['aligner_ms_p50']:.1f}"
        kept = ", ".join(f"{k} x{v}" for k, v in sorted(r["kept_original"].items())) or "-"
        lines.append(f"| {arm} | {r['p50_s'] * unit:.2f} | {r['p90_s'] * unit:.2f} | {r['added_p50_s'] * unit:+.2f} "
                     f"| {rw} | {al} | {kept} |")
    return [*lines, ""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--setup", nargs="+", choices=["embedded", "embedded-zero-shot", "remote"],
                        default=["embedded", "remote"])
    parser.add_argument("--rounds", type=int, default=6, help="requests per arm (embedded)")
    parser.add_argument("--remote-rounds", type=int, default=200, help="requests per arm (remote)")
    parser.add_argument("--max-tokens", type=int, default=48, help="backend max_tokens (embedded)")
    parser.add_argument("--helper-max-tokens", type=int, default=96, help="helpers' max_tokens (embedded)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    results: dict[str, dict[str, dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="aligngate-bench-") as tmp:
        workdir = Path(tmp)
        if "remote" in args.setup:
            procs: list[Proc] = []
            try:
                procs.append(start_fake(workdir, "backend"))
                procs.append(start_fake(workdir, "rewriter", reply="Please explain, step by step and clearly: hello"))
                procs.append(start_fake(workdir, "aligner", reply="A corrected, helpful and harmless answer."))
                config = remote_config(*(p.base_url for p in procs))
                procs.append(start_gateway(workdir, config))
                results["remote"] = measure(_root(procs[-1]), "bench-model", args.remote_rounds, 16)
            finally:
                for p in reversed(procs):
                    p.stop()
        env = {
            "ALIGNGATE_HELPERS__REWRITER__MAX_TOKENS": str(args.helper_max_tokens),
            "ALIGNGATE_HELPERS__ALIGNER__MAX_TOKENS": str(args.helper_max_tokens),
        }
        for setup in ("embedded", "embedded-zero-shot"):
            if setup in args.setup:
                config = zero_shot_config() if setup == "embedded-zero-shot" else None
                gw = start_gateway(workdir, config, env=env)
                try:
                    results[setup] = measure(_root(gw), "smollm2-135m-instruct", args.rounds, args.max_tokens)
                finally:
                    gw.stop()

    lines = [
        "# Latency each arm adds",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}. "
        f"Command: `python benchmarks/helpers.py --setup {' '.join(args.setup)} --rounds {args.rounds} "
        f"--max-tokens {args.max_tokens} --helper-max-tokens {args.helper_max_tokens}`",
        "",
    ]
    if "remote" in results:
        lines += table("Remote helpers that answer at once (the pipeline's own cost)", results["remote"], 1000, "ms")
    titles = {"embedded": "Embedded default (SmolLM2-135M in-process, the trained helpers",
              "embedded-zero-shot": "Embedded default with the zero-shot helpers (no adapters"}
    for setup, title in titles.items():
        if setup in results:
            lines += table(f"{title}; backend max_tokens {args.max_tokens}, helpers {args.helper_max_tokens}, greedy)",
                           results[setup], 1, "s")
    text = "\n".join(lines)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "helpers.md").write_text(text)
    summary: dict[str, Any] = {"benchmark": "helpers"}
    for setup, res in results.items():
        for arm, r in res.items():
            summary[f"{setup}_{arm}_added_p50_ms"] = round(r["added_p50_s"] * 1000, 3)
            summary[f"{setup}_{arm}_p50_ms"] = round(r["p50_s"] * 1000, 3)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
