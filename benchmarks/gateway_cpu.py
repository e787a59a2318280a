"""The gateway's own CPU per request, in process: the ASGI app alone, with no HTTP server and no network.

``benchmarks/proxy_capacity.py`` measures a whole proxy (uvicorn, aiohttp, the kernel's sockets) against the floor;
on a shared machine its rounds move by 10-20%. This one measures only what the gateway adds on top of any proxy
on the same stack: ``create_app`` (lifespan and all) answering non-streamed chat completions, its backend replaced
by a stub that answers at once with a fixed upstream answer (status, headers and body as the fake upstream sends
them), 32 requests at a time, helpers off; with the trace store off and on (SQLite, ``log_bodies`` on, rows written
and flushed inside the timing). CPU time of the whole process (the store's writer thread included) per request.

Each measurement runs in its own process pinned to one CPU, and the variants alternate round by round. With
``--baseline-tree DIR`` the same runs are made from another source tree (a worktree of the previous commit,
``git worktree add ../base HEAD~1``) and the ratios are per-round, so a change is measured side by side.

Prints a table, writes ``benchmarks/results/gateway_cpu.md`` and ends with one JSON line.

    python benchmarks/gateway_cpu.py [--rounds 5] [--requests 20000] [--baseline-tree DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

BODY = json.dumps(
    {"model": "bench-model", "messages": [{"role": "user", "content": "Say hello in five words."}], "max_tokens": 16}
).encode()
ANSWER = json.dumps({
    "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "bench-model",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello there, how are you doing today?"},
                 "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 12, "completion_tokens": 16, "total_tokens": 28},
}).encode()
UPSTREAM_HEADERS = (
    (b"content-type", b"application/json"), (b"x-request-id", b"upstream-1"), (b"date", b"Mon, 07 Dec 2026"),
    (b"server", b"fake"), (b"content-length", str(len(ANSWER)).encode()),
)
CONCURRENCY = 32


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def _child(store: bool, requests: int) -> float:
    """CPU µs per request of this process's gateway (run from whichever source tree is on ``sys.path``)."""
    from gateway.app import create_app
    from gateway.config import Settings
    from gateway.upstream.protocol import UpstreamResult

    class StubBackend:
        name = "bench-model"
        upstream_model = None

        async def fetch(self, path: str, body: bytes) -> Any:
            return UpstreamResult(200, "application/json", ANSWER, 0, UPSTREAM_HEADERS)

        async def close(self) -> None:
            return None

    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings.model_validate({
            "backends": [{"name": "bench-model", "urls": ["http://127.0.0.1:9/v1"]}],
            "store": {"url": f"sqlite:///{tmp}/bench.db"} if store else {"enabled": False},
        })
        app = create_app(settings)
        life: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        started = asyncio.Event()

        async def life_send(message: dict[str, Any]) -> None:
            started.set()

        await life.put({"type": "lifespan.startup"})
        lifespan = asyncio.create_task(app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}},
                                           life.get, life_send))
        await started.wait()
        app.state.inference.backends["bench-model"] = StubBackend()
        headers = [(b"host", b"127.0.0.1:8000"), (b"content-type", b"application/json"),
                   (b"content-length", str(len(BODY)).encode())]
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
                 "scheme": "http", "path": "/v1/chat/completions", "raw_path": b"/v1/chat/completions",
                 "query_string": b"", "root_path": "", "headers": headers, "client": ("127.0.0.1", 50000),
                 "server": ("127.0.0.1", 8000)}
        forever = asyncio.Event()

        async def one() -> None:
            pending = [{"type": "http.request", "body": BODY, "more_body": False}]
            status = 0

            async def receive() -> dict[str, Any]:
                if pending:
                    return pending.pop()
                await forever.wait()
                return {"type": "http.disconnect"}

            async def send(message: dict[str, Any]) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]

            await app(dict(scope, state={}), receive, send)
            if status != 200:
                raise SystemExit(f"the gateway answered {status}")

        for _ in range(1000):  # warm-up
            await one()
        if app.state.store is not None:
            await app.state.store.flush()
        c0 = _cpu()
        for _ in range(requests // CONCURRENCY):
            await asyncio.gather(*(one() for _ in range(CONCURRENCY)))
        if app.state.store is not None:
            await app.state.store.flush()
        cpu = _cpu() - c0
        await life.put({"type": "lifespan.shutdown"})
        await lifespan
    return cpu / (requests // CONCURRENCY * CONCURRENCY) * 1e6


def _run(tree: Path, store: bool, requests: int, cpu: int) -> float:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--requests", str(requests)]
    if store:
        cmd.append("--store")
    if hasattr(os, "sched_setaffinity"):
        cmd = ["taskset", "-c", str(cpu), *cmd]
    out = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{tree}: {out.stderr[-2000:]}")
    return float(json.loads(out.stdout.strip().splitlines()[-1])["cpu_us"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=20000, help="requests per measurement")
    parser.add_argument("--baseline-tree", type=Path, help="also measure this source tree (a worktree)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--store", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps({"cpu_us": asyncio.run(_child(args.store, args.requests))}))
        return

    cpu = min(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 0
    trees = {"this tree": ROOT}
    if args.baseline_tree is not None:
        trees["baseline"] = args.baseline_tree.resolve()
    variants = [(name, store) for name in trees for store in (False, True)]
    samples: dict[tuple[str, bool], list[float]] = {v: [] for v in variants}
    for r in range(args.rounds):
        for name, store in variants[r % len(variants):] + variants[: r % len(variants)]:
            samples[(name, store)].append(_run(trees[name], store, args.requests, cpu))

    def label(store: bool) -> str:
        return "store on (SQLite)" if store else "store off"

    lines = [
        "# The gateway's own CPU per request (in process)",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}. Command: "
        f"`python benchmarks/gateway_cpu.py {' '.join(sys.argv[1:])}`. The ASGI app with a stub backend (no HTTP "
        f"server, no network), {CONCURRENCY} requests at a time, non-streamed chat completions, helpers off; "
        f"{args.requests} requests per run, each run its own process pinned to one CPU; {args.rounds} rounds, "
        "variants alternating; medians.",
        "",
        "| tree | trace store | CPU per request (µs) | runs (µs) |",
        "|---|---|---:|---|",
    ]
    summary: dict[str, Any] = {"benchmark": "gateway_cpu", "requests": args.requests, "rounds": args.rounds}
    for (name, store), values in samples.items():
        med = statistics.median(values)
        lines.append(f"| {name} | {label(store)} | {med:.1f} | {', '.join(f'{v:.0f}' for v in values)} |")
        key = f"{'this' if name == 'this tree' else 'baseline'}_{'store' if store else 'no_store'}_us"
        summary[key] = round(med, 1)
    this_store = statistics.median(samples[("this tree", True)])
    this_plain = statistics.median(samples[("this tree", False)])
    lines += ["", f"The trace store's share: {this_store - this_plain:.1f} µs per request."]
    summary["store_us"] = round(this_store - this_plain, 1)
    if args.baseline_tree is not None:
        lines.append("")
        for store in (False, True):
            ratio = statistics.median(
                a / b for a, b in zip(samples[("this tree", store)], samples[("baseline", store)], strict=True)
            )
            lines.append(f"This tree / baseline (`{args.baseline_tree}`), {label(store)}: {ratio:.2f}x (median of "
                         "per-round ratios).")
            summary[f"vs_baseline_{'store' if store else 'no_store'}"] = round(ratio, 3)
    lines.append("")
    text = "\n".join(lines)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gateway_cpu.md").write_text(text)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
