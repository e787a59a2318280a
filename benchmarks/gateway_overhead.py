"""Gateway overhead: the fake upstream called directly vs through aligngate (helpers off), side by side.

Starts a fast fake OpenAI-compatible upstream and ``aligngate serve`` as their own processes on free ports,
then measures, interleaving the targets so that machine noise hits both alike:

* sequential non-streamed latency (p50/p99) and the latency the gateway adds;
* throughput and p50/p99 at concurrency 1/8/32/128 (best of N rounds per target);
* added time to the first streamed token;
* CPU time per request of the gateway's processes (workers included) and of the upstream's.

Prints a table, writes ``benchmarks/results/gateway_overhead.md`` (and a PNG when matplotlib is present)
and ends with one JSON line of ratios. Run: ``python benchmarks/gateway_overhead.py [--quick]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
CHAT_BODY = json.dumps(
    {"model": "bench-model", "messages": [{"role": "user", "content": "Say hello in five words."}], "max_tokens": 16}
).encode()
STREAM_BODY = json.dumps(
    {
        "model": "bench-model",
        "messages": [{"role": "user", "content": "Say hello."}],
        "stream": True,
        "fake": {"n_words": 20},
    }
).encode()
CLK_TCK = os.sysconf("SC_CLK_TCK")
JSON = {"Content-Type": "application/json"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User+system CPU seconds of a process and all its live descendants (from /proc)."""
    total = 0.0
    stack = [pid]
    while stack:
        p = stack.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / CLK_TCK
            children = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        stack.extend(int(c) for c in children)
    return total


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    base_url: str
    log: Path

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()


def start_upstream(workdir: Path) -> Proc:
    log = workdir / "upstream.log"
    popen = subprocess.Popen(
        [sys.executable, "-m", "tests.fakes.upstream", "--port", "0", "--name", "bench"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=log.open("wb"),
    )
    assert popen.stdout is not None
    line = popen.stdout.readline().decode().strip()
    if not line.startswith("READY"):
        popen.kill()
        raise RuntimeError(f"fake upstream failed to start: {line!r} {log.read_text()}")
    port = int(line.split()[1])
    return Proc("upstream", popen, f"http://127.0.0.1:{port}/v1", log)


def start_gateway(workdir: Path, upstream: str, workers: int) -> Proc:
    port = free_port()
    config = workdir / "gateway.yaml"
    config.write_text(
        f"server: {{host: 127.0.0.1, port: {port}, workers: {workers}, log_level: warning}}\n"
        f"backends:\n  - name: bench-model\n    urls: [{upstream}]\n"
    )
    log = workdir / "gateway.log"
    popen = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--config", str(config)],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log.open("wb"),
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    import urllib.request

    while time.monotonic() < deadline:
        if popen.poll() is not None:
            raise RuntimeError(f"gateway exited: {log.read_text()}")
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=1) as r:
                if r.status == 200:
                    break
        except OSError:
            time.sleep(0.1)
    else:
        popen.kill()
        raise RuntimeError(f"gateway did not become healthy: {log.read_text()}")
    return Proc("aligngate", popen, url + "/v1", log)


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    k = min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))
    return s[k]


@dataclass
class Run:
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    wall_s: float = 0.0

    @property
    def rps(self) -> float:
        return len(self.latencies) / self.wall_s if self.wall_s else 0.0


async def one_chat(session: aiohttp.ClientSession, url: str) -> float:
    t = time.perf_counter()
    async with session.post(url + "/chat/completions", data=CHAT_BODY, headers=JSON) as r:
        await r.read()
        if r.status != 200:
            raise RuntimeError(f"HTTP {r.status}")
    return time.perf_counter() - t


async def one_stream_ttft(session: aiohttp.ClientSession, url: str) -> float:
    t = time.perf_counter()
    ttft = None
    async with session.post(url + "/chat/completions", data=STREAM_BODY, headers=JSON) as r:
        async for line in r.content:
            if ttft is None and line.startswith(b"data: ") and b'"content":"' in line and b'"content":""' not in line:
                ttft = time.perf_counter() - t
        if r.status != 200:
            raise RuntimeError(f"HTTP {r.status}")
    assert ttft is not None
    return ttft


async def sequential(urls: dict[str, str], fn: Callable[[aiohttp.ClientSession, str], Awaitable[float]],
                     n: int, block: int = 50) -> dict[str, Run]:
    """``n`` requests per target, alternating blocks of ``block`` between targets."""
    runs = {name: Run() for name in urls}
    sessions = {name: aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) for name in urls}
    try:
        for name, url in urls.items():  # warm-up
            for _ in range(50):
                await fn(sessions[name], url)
        done = 0
        while done < n:
            for name, url in urls.items():
                t0 = time.perf_counter()
                for _ in range(block):
                    runs[name].latencies.append(await fn(sessions[name], url))
                runs[name].wall_s += time.perf_counter() - t0
            done += block
    finally:
        for s in sessions.values():
            await s.close()
    return runs


async def concurrent(url: str, concurrency: int, duration_s: float) -> Run:
    run = Run()
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        for _ in range(min(concurrency, 64)):  # open the connections first
            await one_chat(session, url)
        stop = time.perf_counter() + duration_s

        async def worker() -> None:
            while time.perf_counter() < stop:
                try:
                    run.latencies.append(await one_chat(session, url))
                except Exception:
                    run.errors += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        run.wall_s = time.perf_counter() - t0
    return run


async def measure(args: argparse.Namespace, procs: dict[str, Proc]) -> dict[str, object]:
    urls = {"direct": procs["upstream"].base_url, "aligngate": procs["aligngate"].base_url}
    out: dict[str, object] = {}

    seq = await sequential(urls, one_chat, args.sequential)
    out["sequential"] = {k: {"p50_ms": pct(r.latencies, 50) * 1e3, "p99_ms": pct(r.latencies, 99) * 1e3}
                         for k, r in seq.items()}

    ttft = await sequential(urls, one_stream_ttft, args.streams, block=20)
    out["ttft"] = {k: {"p50_ms": pct(r.latencies, 50) * 1e3, "p99_ms": pct(r.latencies, 99) * 1e3}
                   for k, r in ttft.items()}

    conc: dict[str, dict[str, dict[str, float]]] = {}
    cpu: dict[str, float] = {"gateway_s": 0.0, "gateway_requests": 0, "upstream_s": 0.0, "upstream_requests": 0}
    for c in args.concurrency:
        best: dict[str, Run] = {}
        for _ in range(args.rounds):
            for name, url in urls.items():
                g0, u0 = cpu_seconds(procs["aligngate"].popen.pid), cpu_seconds(procs["upstream"].popen.pid)
                run = await concurrent(url, c, args.duration)
                g1, u1 = cpu_seconds(procs["aligngate"].popen.pid), cpu_seconds(procs["upstream"].popen.pid)
                if name == "aligngate":
                    cpu["gateway_s"] += g1 - g0
                    cpu["gateway_requests"] += len(run.latencies)
                else:
                    cpu["upstream_s"] += u1 - u0
                    cpu["upstream_requests"] += len(run.latencies)
                if name not in best or run.rps > best[name].rps:
                    best[name] = run
        conc[str(c)] = {
            name: {"rps": r.rps, "p50_ms": pct(r.latencies, 50) * 1e3, "p99_ms": pct(r.latencies, 99) * 1e3,
                   "errors": r.errors}
            for name, r in best.items()
        }
    out["concurrency"] = conc
    out["cpu_us_per_request"] = {
        "aligngate": cpu["gateway_s"] / max(cpu["gateway_requests"], 1) * 1e6,
        "upstream": cpu["upstream_s"] / max(cpu["upstream_requests"], 1) * 1e6,
    }
    return out


def render(res: dict[str, object], args: argparse.Namespace) -> tuple[str, dict[str, float]]:
    seq = res["sequential"]
    ttft = res["ttft"]
    conc = res["concurrency"]
    cpu = res["cpu_us_per_request"]
    assert isinstance(seq, dict) and isinstance(ttft, dict) and isinstance(conc, dict) and isinstance(cpu, dict)
    lines = [
        "# Gateway overhead (helpers off)",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}; "
        f"aligngate workers: {args.workers}; fake upstream and load client on the same machine.",
        f"Command: `python benchmarks/gateway_overhead.py{' --quick' if args.quick else ''}`",
        "",
        "| measure | direct | aligngate | added |",
        "|---|---:|---:|---:|",
    ]
    for q in ("p50_ms", "p99_ms"):
        d, g = seq["direct"][q], seq["aligngate"][q]
        lines.append(f"| sequential {q[:3]} latency (ms) | {d:.3f} | {g:.3f} | {g - d:+.3f} |")
    for q in ("p50_ms", "p99_ms"):
        d, g = ttft["direct"][q], ttft["aligngate"][q]
        lines.append(f"| stream first token {q[:3]} (ms) | {d:.3f} | {g:.3f} | {g - d:+.3f} |")
    lines += ["", "| concurrency | direct req/s | aligngate req/s | ratio | direct p50/p99 ms | aligngate p50/p99 ms "
              "| added p50/p99 ms | errors |", "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for c, row in conc.items():
        d, g = row["direct"], row["aligngate"]
        ratio = g["rps"] / d["rps"]
        added = f"{g['p50_ms'] - d['p50_ms']:+.2f}/{g['p99_ms'] - d['p99_ms']:+.2f}"
        lines.append(
            f"| {c} | {d['rps']:.0f} | {g['rps']:.0f} | {ratio:.2f} | {d['p50_ms']:.2f}/{d['p99_ms']:.2f} "
            f"| {g['p50_ms']:.2f}/{g['p99_ms']:.2f} | {added} | {d['errors'] + g['errors']} |"
        )
    lines += ["", f"CPU per request: aligngate {cpu['aligngate']:.0f} µs (all its processes), "
              f"fake upstream {cpu['upstream']:.0f} µs.", ""]
    summary = {
        "added_p50_ms_sequential": seq["aligngate"]["p50_ms"] - seq["direct"]["p50_ms"],
        "added_p99_ms_sequential": seq["aligngate"]["p99_ms"] - seq["direct"]["p99_ms"],
        "added_ttft_p50_ms": ttft["aligngate"]["p50_ms"] - ttft["direct"]["p50_ms"],
        "aligngate_cpu_us_per_request": cpu["aligngate"],
    }
    for c, row in conc.items():
        summary[f"throughput_ratio_c{c}"] = row["aligngate"]["rps"] / row["direct"]["rps"]
        summary[f"added_p50_ms_c{c}"] = row["aligngate"]["p50_ms"] - row["direct"]["p50_ms"]
        summary[f"added_p99_ms_c{c}"] = row["aligngate"]["p99_ms"] - row["direct"]["p99_ms"]
    summary["aligngate_over_direct_p50_sequential"] = seq["aligngate"]["p50_ms"] / seq["direct"]["p50_ms"]
    return "\n".join(lines), summary


def plot(res: dict[str, object], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    conc = res["concurrency"]
    assert isinstance(conc, dict)
    levels = list(conc)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for name in ("direct", "aligngate"):
        ax1.plot(levels, [conc[c][name]["rps"] for c in levels], marker="o", label=name)
        ax2.plot(levels, [conc[c][name]["p99_ms"] for c in levels], marker="o", label=name)
    ax1.set(title="Throughput", xlabel="concurrency", ylabel="requests/s")
    ax2.set(title="p99 latency", xlabel="concurrency", ylabel="ms")
    for ax in (ax1, ax2):
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests, one round (a smoke run)")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--sequential", type=int, default=2000)
    parser.add_argument("--streams", type=int, default=400)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 128])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per concurrency run")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.quick:
        args.sequential, args.streams, args.rounds, args.duration = 300, 60, 1, 1.0

    with tempfile.TemporaryDirectory(prefix="aligngate-bench-") as tmp:
        workdir = Path(tmp)
        procs: dict[str, Proc] = {}
        try:
            procs["upstream"] = start_upstream(workdir)
            procs["aligngate"] = start_gateway(workdir, procs["upstream"].base_url, args.workers)
            try:
                import uvloop

                loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = uvloop.new_event_loop
            except ImportError:
                loop_factory = None
            with asyncio.Runner(loop_factory=loop_factory) as runner:
                res = runner.run(measure(args, procs))
        finally:
            for p in procs.values():
                p.stop()
    table, summary = render(res, args)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gateway_overhead.md").write_text(table)
    if plot(res, args.out / "gateway_overhead.png"):
        print(f"wrote {args.out / 'gateway_overhead.md'} and gateway_overhead.png")
    print(json.dumps({"benchmark": "gateway_overhead", **{k: round(v, 4) for k, v in summary.items()}}))


if __name__ == "__main__":
    main()
