"""Streamed correction, ``buffer`` against ``sentence``: time to the first token and total time, side by side.

Fake OpenAI-compatible servers at fixed rates stand in for the models, each its own process: a backend at 50
tokens a second (``--token-delay-s`` 0.02 for streams, ``--whole-token-delay-s`` 0.02 for whole answers) that
answers 300 tokens in sentences of 20, and aligners at 200 tokens a second whose correction is as long as what
they correct (``--echo``): a whole-answer Aligner (``aligner-v1``, streamed) for ``buffer`` and a Stream Aligner
(``stream``, one sentence per call) for ``sentence``. Two ``aligngate serve`` processes, one per mode, are
driven over HTTP with streamed chat requests on the ``align`` arm, the modes interleaved request by request so
that machine noise hits both alike. Time to the first token is to the first non-empty content delta the client
reads; total time to ``[DONE]``.

``--setup embedded`` measures the same on the embedded default instead (SmolLM2-135M-Instruct in-process as the
backend and as the aligner with its shipped adapter, greedy): ``buffer`` with ``aligner-chat``, ``sentence`` with
``stream-chat``, the same model and adapter; the answers are what the model writes for one long-answer question
with ``max_tokens`` ``--tokens``, so the two modes serve different text (the corrections differ).

The targets: sentence mode's first token within the backend's first sentence plus one sentence's correction
(the bound below, fake servers only; the boundary is known one token after the sentence, when the next word
arrives), i.e. at least 3x sooner than buffer mode; its total time at most 1.2x buffer mode's. Prints a table,
writes ``benchmarks/results/stream_correction.md`` (``stream_correction_embedded.md``) and ends with one JSON
line.

    python benchmarks/stream_correction.py [--setup fake|embedded] [--rounds 5] [--tokens 300] [--sentence-tokens 20]
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
from pathlib import Path

import httpx
from procs import ROOT, Proc, start_fake, start_gateway

RESULTS = ROOT / "benchmarks" / "results"
MODEL = "bench-model"
QUESTION = "How should I prepare a simple loaf of bread at home?"
#: What the embedded setup asks (a question SmolLM2 answers at length).
LONG_QUESTION = "Explain step by step how to bake a simple loaf of bread at home, with tips for each step."
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


def embedded_config(mode: str) -> str:
    """The embedded default on the ``align`` arm, its aligner correcting in ``mode``, as YAML."""
    import yaml

    from gateway.config import EMBEDDED_DEFAULT

    config = copy.deepcopy(EMBEDDED_DEFAULT)
    config["backends"][0]["name"] = MODEL
    aligner = config["helpers"]["aligner"]
    aligner.update({"template": "stream-chat" if mode == "sentence" else "aligner-chat", "stream": mode,
                    "timeout_s": 600})
    config["helpers"] = {"aligner": aligner, "probe": False}
    config["experiment"] = {"name": f"bench-{mode}", "arms": {"align": 1}}
    config["store"] = {"enabled": False}
    return str(yaml.safe_dump(config))


def one(http: httpx.Client, url: str, question: str = QUESTION, max_tokens: int | None = None
        ) -> tuple[float, float, str]:
    """(time to the first token, total time, text) of one streamed request."""
    body: dict[str, object] = {"model": MODEL, "stream": True, "messages": [{"role": "user", "content": question}]}
    if max_tokens is not None:
        body.update({"max_tokens": max_tokens, "temperature": 0})
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
    parser.add_argument("--setup", choices=["fake", "embedded"], default="fake")
    parser.add_argument("--rounds", type=int, default=5, help="requests per mode")
    parser.add_argument("--tokens", type=int, default=300, help="tokens of the backend's answer (embedded: max_tokens)")
    parser.add_argument("--sentence-tokens", type=int, default=20, help="tokens per sentence (fake setup)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    embedded = args.setup == "embedded"
    reply = answer(args.tokens, args.sentence_tokens)
    assert len(reply.split()) == args.tokens
    question, max_tokens = (LONG_QUESTION, args.tokens) if embedded else (QUESTION, None)

    results: dict[str, dict[str, list[float]]] = {m: {"ttft": [], "total": []} for m in ("buffer", "sentence")}
    texts: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="aligngate-bench-") as tmp:
        workdir = Path(tmp)
        procs: list[Proc] = []
        try:
            configs: dict[str, str] = {}
            if embedded:
                configs = {mode: embedded_config(mode) for mode in ("buffer", "sentence")}
            else:
                backend = start_fake(workdir, "backend", reply, ["--token-delay-s", str(BACKEND_TOKEN_S),
                                                                  "--whole-token-delay-s", str(BACKEND_TOKEN_S)])
                procs.append(backend)
                whole = start_fake(workdir, "aligner-whole", None, ["--echo", WHOLE_ECHO, "--token-delay-s",
                                                                     str(ALIGNER_TOKEN_S)])
                procs.append(whole)
                per_sentence = start_fake(workdir, "aligner-sentence", None, [
                    "--echo", STREAM_ECHO, "--whole-token-delay-s", str(ALIGNER_TOKEN_S)])
                procs.append(per_sentence)
                configs = {"buffer": config(backend, whole, "buffer"), "sentence": config(backend, per_sentence,
                                                                                          "sentence")}
            gateways = {}
            for mode, text in configs.items():
                (workdir / mode).mkdir()
                gateways[mode] = start_gateway(workdir / mode, text)
                procs.append(gateways[mode])
            with httpx.Client(timeout=900) as http:
                for gw in gateways.values():  # warm-up
                    one(http, gw.base_url, question, max_tokens)
                for r in range(args.rounds):
                    order = ("buffer", "sentence") if r % 2 == 0 else ("sentence", "buffer")
                    for mode in order:
                        ttft, total, text = one(http, gateways[mode].base_url, question, max_tokens)
                        results[mode]["ttft"].append(ttft)
                        results[mode]["total"].append(total)
                        texts[mode] = text
        finally:
            for p in reversed(procs):
                p.stop()

    if not embedded:  # every correction echoes what it was given: both modes serve the backend's answer, whole
        assert texts["buffer"] == reply and texts["sentence"] == reply, texts
    med = {m: {k: statistics.median(v) for k, v in r.items()} for m, r in results.items()}
    k = args.sentence_tokens
    bound = k * BACKEND_TOKEN_S + k * ALIGNER_TOKEN_S
    sooner = med["buffer"]["ttft"] / med["sentence"]["ttft"]
    total_ratio = med["sentence"]["total"] / med["buffer"]["total"]
    backend_s = args.tokens * BACKEND_TOKEN_S
    command = (f"`python benchmarks/stream_correction.py --setup {args.setup} --rounds {args.rounds} "
               f"--tokens {args.tokens}" + ("`" if embedded else f" --sentence-tokens {args.sentence_tokens}`"))
    if embedded:
        words = {m: len(t.split()) for m, t in texts.items()}
        setup = (f"The embedded default (SmolLM2-135M-Instruct in-process, greedy) as backend and aligner (its shipped "
                 f"adapter; `aligner-chat` for buffer, `stream-chat` for sentence), one question answered with "
                 f"max_tokens {args.tokens}; served answers of {words['buffer']} (buffer) and {words['sentence']} "
                 f"(sentence) words; medians of {args.rounds} streamed requests per mode, interleaved.")
    else:
        setup = (f"Backend {1 / BACKEND_TOKEN_S:.0f} tok/s, aligners {1 / ALIGNER_TOKEN_S:.0f} tok/s (fake servers), "
                 f"{args.tokens}-token answers in sentences of {k} tokens; medians of {args.rounds} streamed "
                 f"requests per mode, interleaved. The backend alone takes {backend_s:.1f} s.")
    lines = [
        f"# Streamed correction: buffer against sentence ({args.setup})",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}. Command: "
        f"{command}. {setup}",
        "",
        "| mode | first token p50 (s) | first token min-max (s) | total p50 (s) | total min-max (s) |",
        "|---|---:|---:|---:|---:|",
    ]
    for mode in ("buffer", "sentence"):
        t, tot = results[mode]["ttft"], results[mode]["total"]
        lines.append(f"| {mode} | {med[mode]['ttft']:.3f} | {min(t):.3f}-{max(t):.3f} | {med[mode]['total']:.3f} "
                     f"| {min(tot):.3f}-{max(tot):.3f} |")
    met = {
        "sooner_3x": sooner >= 3,
        "total_1_2x": total_ratio <= 1.2,
    }
    lines += ["", "| target | measured | |", "|---|---:|---|"]
    if not embedded:
        met["first_token_bound"] = med["sentence"]["ttft"] <= bound + BACKEND_TOKEN_S + 0.05
        lines.append(
            f"| sentence first token ≤ first sentence + one correction ({k} x {BACKEND_TOKEN_S * 1000:.0f} ms + "
            f"{k} x {ALIGNER_TOKEN_S * 1000:.0f} ms = {bound:.2f} s; + one token to see the boundary, + 50 ms "
            f"of HTTP) | {med['sentence']['ttft']:.3f} s | {'met' if met['first_token_bound'] else '**not met**'} |")
    lines += [
        f"| first token ≥ 3x sooner than buffer | {sooner:.1f}x | {'met' if met['sooner_3x'] else '**not met**'} |",
        f"| total ≤ 1.2x buffer's | {total_ratio:.2f}x | {'met' if met['total_1_2x'] else '**not met**'} |",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    name = "stream_correction_embedded.md" if embedded else "stream_correction.md"
    (args.out / name).write_text(text)
    summary: dict[str, object] = {
        "benchmark": "stream_correction", "setup": args.setup,
        "rounds": args.rounds, "tokens": args.tokens, "sentence_tokens": None if embedded else k,
        "buffer_ttft_s": round(med["buffer"]["ttft"], 4), "sentence_ttft_s": round(med["sentence"]["ttft"], 4),
        "buffer_total_s": round(med["buffer"]["total"], 4), "sentence_total_s": round(med["sentence"]["total"], 4),
        "first_token_bound_s": None if embedded else round(bound, 4), "ttft_speedup": round(sooner, 2),
        "total_ratio": round(total_ratio, 3), "targets_met": met,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
