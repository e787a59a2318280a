"""Streamed correction, ``buffer`` against ``sentence``: time to the first token and total time, side by side.

Fake OpenAI-compatible servers at fixed rates stand in for the models, each its own process: a backend at 50
tokens a second (``--token-delay-s`` 0.02 for streams, ``--whole-token-delay-s`` 0.02 for whole answers) that
answers 300 tokens in sentences of 20, and aligners at 200 tokens a second whose correction is as long as what
they correct (``--echo``): a whole-answer Aligner (``aligner-v1``, streamed) for ``buffer`` and a Stream Aligner
(``stream``, one sentence per call) for ``sentence``. Two ``aligngate serve`` processes, one per mode, are
driven over HTTP with streamed chat requests on the ``align`` arm, the modes interleaved request by request so
that machine noise hits both alike. Time to the first token is to the first non-empty content delta the client
reads; total time to ``[DONE]``.

The targets: sentence mode's first token within the backend's first sentence plus one sentence's correction
(the bound below; the boundary is known one token after the sentence, when the next word arrives), i.e. at
least 3x sooner than buffer mode; its total time at most 1.2x buffer mode's. Prints a table, writes
``benchmarks/results/stream_correction.md`` and ends with one JSON line.

    python benchmarks/stream_correction.py [--rounds 5] [--tokens 300] [--sentence-tokens 20]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import httpx
from procs import ROOT, Proc, start_fake, start_gateway

RESULTS = ROOT / "benchmarks" / "results"
MODEL = "bench-model"
QUESTION = "How should I prepare a simple loaf of bread at home?"
BACKEND_TOKEN_S = 0.02  # 50 tokens a second
ALIGNER_TOKEN_S = 0.005  # 200 tokens a second
STREAM_ECHO = r"##Answer_Last_Sentence: (.*) \| ##Your_Revision: "
WHOLE_ECHO = r" \| (.*) ASSISTANT:$"
FILLER = [
    "the", "dough", "should", "rest", "in", "a", "warm", "place", "while", "you", "prepare", "the", "oven", "and",
    "clean", "the", "bench", "before", "shaping", "it", "gently", "into", "a", "round", "loaf",
]


def answer(tokens: int, per_sentence: int) -> str:
    """``tokens`` words in sentences of ``per_sentence`` words, with abbreviations and decimals inside."""
    sentences: list[str] = []
    left = tokens
    k = 0
    while left > 0:
        n = min(per_sentence, left)
        words = [f"Step{k + 1}", "uses", "e.g.", f"{k + 2}.5"] + [FILLER[(k + i) % len(FILLER)] for i in range(n)]
        sentences.append(" ".join(words[:n]) + ".")
        left -= n
        k += 1
    return " ".join(sentences)


def config(backend: Proc, aligner: Proc, mode: str) -> str:
    template = "stream" if mode == "sentence" else "aligner-v1"
    return (
        f"backends:\n  - name: {MODEL}\n    urls: [{backend.base_url}]\n"
        f"helpers:\n  aligner: {{url: {aligner.base_url}, model: aligner, template: {template}, stream: {mode}, "
        "timeout_s: 60}\n"
        "experiment: {arms: {align: 1}}\n"
        "store: {enabled: false}\n"
    )


def one(http: httpx.Client, url: str) -> tuple[float, float, str]:
    """(time to the first token, total time, text) of one streamed request."""
    body = {"model": MODEL, "stream": True, "messages": [{"role": "user", "content": QUESTION}]}
    start = time.perf_counter()
    first: float | None = None
    text: list[str] = []
    with http.stream("POST", url + "/chat/completions", json=body) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: "):
                continue
            data = line[6:]
            if data == "[DONE]":
                break
            event = json.loads(data)
            if "error" in event:
                raise RuntimeError(f"stream failed: {event['error']}")
            for choice in event.get("choices") or []:
                content = (choice.get("delta") or {}).get("content")
                if content:
                    if first is None:
                        first = time.perf_counter() - start
                    text.append(content)
    total = time.perf_counter() - start
    assert first is not None, "no content"
    return first, total, "".join(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="requests per mode")
    parser.add_argument("--tokens", type=int, default=300, help="tokens of the backend's answer")
    parser.add_argument("--sentence-tokens", type=int, default=20, help="tokens per sentence")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    reply = answer(args.tokens, args.sentence_tokens)
    assert len(reply.split()) == args.tokens

    results: dict[str, dict[str, list[float]]] = {m: {"ttft": [], "total": []} for m in ("buffer", "sentence")}
    texts: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="aligngate-bench-") as tmp:
        workdir = Path(tmp)
        procs: list[Proc] = []
        try:
            backend = start_fake(workdir, "backend", reply, ["--token-delay-s", str(BACKEND_TOKEN_S),
                                                              "--whole-token-delay-s", str(BACKEND_TOKEN_S)])
            procs.append(backend)
            whole = start_fake(workdir, "aligner-whole", None, ["--echo", WHOLE_ECHO, "--token-delay-s",
                                                                 str(ALIGNER_TOKEN_S)])
            procs.append(whole)
            per_sentence = start_fake(workdir, "aligner-sentence", None, [
                "--echo", STREAM_ECHO, "--whole-token-delay-s", str(ALIGNER_TOKEN_S)])
            procs.append(per_sentence)
            gateways = {}
            for mode, aligner in (("buffer", whole), ("sentence", per_sentence)):
                (workdir / mode).mkdir()
                gateways[mode] = start_gateway(workdir / mode, config(backend, aligner, mode))
                procs.append(gateways[mode])
            with httpx.Client(timeout=120) as http:
                for gw in gateways.values():  # warm-up
                    one(http, gw.base_url)
                for r in range(args.rounds):
                    order = ("buffer", "sentence") if r % 2 == 0 else ("sentence", "buffer")
                    for mode in order:
                        ttft, total, text = one(http, gateways[mode].base_url)
                        results[mode]["ttft"].append(ttft)
                        results[mode]["total"].append(total)
                        texts[mode] = text
        finally:
            for p in reversed(procs):
                p.stop()

    # every correction echoes what it was given: both modes serve the backend's answer, whole
    assert texts["buffer"] == reply and texts["sentence"] == reply, texts
    med = {m: {k: statistics.median(v) for k, v in r.items()} for m, r in results.items()}
    k = args.sentence_tokens
    bound = k * BACKEND_TOKEN_S + k * ALIGNER_TOKEN_S
    sooner = med["buffer"]["ttft"] / med["sentence"]["ttft"]
    total_ratio = med["sentence"]["total"] / med["buffer"]["total"]
    backend_s = args.tokens * BACKEND_TOKEN_S
    lines = [
        "# Streamed correction: buffer against sentence",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}. Command: "
        f"`python benchmarks/stream_correction.py --rounds {args.rounds} --tokens {args.tokens} "
        f"--sentence-tokens {args.sentence_tokens}`. Backend {1 / BACKEND_TOKEN_S:.0f} tok/s, aligners "
        f"{1 / ALIGNER_TOKEN_S:.0f} tok/s (fake servers), {args.tokens}-token answers in sentences of {k} tokens; "
        f"medians of {args.rounds} streamed requests per mode, interleaved. The backend alone takes "
        f"{backend_s:.1f} s.",
        "",
        "| mode | first token p50 (s) | first token min-max (s) | total p50 (s) | total min-max (s) |",
        "|---|---:|---:|---:|---:|",
    ]
    for mode in ("buffer", "sentence"):
        t, tot = results[mode]["ttft"], results[mode]["total"]
        lines.append(f"| {mode} | {med[mode]['ttft']:.3f} | {min(t):.3f}-{max(t):.3f} | {med[mode]['total']:.3f} "
                     f"| {min(tot):.3f}-{max(tot):.3f} |")
    met = {
        "first_token_bound": med["sentence"]["ttft"] <= bound + BACKEND_TOKEN_S + 0.05,
        "sooner_3x": sooner >= 3,
        "total_1_2x": total_ratio <= 1.2,
    }
    lines += [
        "",
        "| target | measured | |",
        "|---|---:|---|",
        f"| sentence first token ≤ first sentence + one correction ({k} x {BACKEND_TOKEN_S * 1000:.0f} ms + "
        f"{k} x {ALIGNER_TOKEN_S * 1000:.0f} ms = {bound:.2f} s; + one token to see the boundary, + 50 ms "
        f"of HTTP) | {med['sentence']['ttft']:.3f} s | {'met' if met['first_token_bound'] else '**not met**'} |",
        f"| first token ≥ 3x sooner than buffer | {sooner:.1f}x | {'met' if met['sooner_3x'] else '**not met**'} |",
        f"| total ≤ 1.2x buffer's | {total_ratio:.2f}x | {'met' if met['total_1_2x'] else '**not met**'} |",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "stream_correction.md").write_text(text)
    print(json.dumps({
        "benchmark": "stream_correction",
        "rounds": args.rounds, "tokens": args.tokens, "sentence_tokens": k,
        "buffer_ttft_s": round(med["buffer"]["ttft"], 4), "sentence_ttft_s": round(med["sentence"]["ttft"], 4),
        "buffer_total_s": round(med["buffer"]["total"], 4), "sentence_total_s": round(med["sentence"]["total"], 4),
        "first_token_bound_s": round(bound, 4), "ttft_speedup": round(sooner, 2), "total_ratio": round(total_ratio, 3),
        "targets_met": met,
    }))


if __name__ == "__main__":
    main()
