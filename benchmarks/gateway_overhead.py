"""Gateway overhead: the fake upstream called directly vs through aligngate (helpers off) vs through LiteLLM.

Starts a fast fake OpenAI-compatible upstream, ``aligngate serve`` and the LiteLLM proxy (``litellm[proxy]``
pinned, installed once into ``benchmarks/.venv-litellm``; model prefix ``hosted_vllm/``; same worker count)
as their own processes on free ports, then measures, interleaving the targets so that machine noise hits
all alike:

* sequential non-streamed latency (p50/p99) and the latency the gateway adds;
* throughput and p50/p99 at concurrency 1/8/32/128 (best of N rounds per target);
* added time to the first streamed token;
* CPU time per request of each proxy's processes (workers included) and of the upstream's.

Prints a table, writes ``benchmarks/results/gateway_overhead.md`` (and a PNG when matplotlib is present)
and ends with one JSON line of ratios (aligngate/direct and aligngate/LiteLLM).
Run: ``python benchmarks/gateway_overhead.py [--quick] [--targets direct aligngate litellm] [--no-litellm]
[--baseline-tree DIR]``. ``--baseline-tree`` adds the target ``baseline``: ``aligngate serve`` run from another
source tree (say ``git worktree add /tmp/prev HEAD~1``), measured interleaved with this one, for a change's
before/after side by side in one run.
If the LiteLLM venv cannot be built the run goes on without it and says so.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from procs import ROOT, Proc, free_port, start_fake, start_gateway, tree, wait_healthy

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


def cpu_seconds(pid: int) -> float:
    """User+system CPU seconds of a process and all its live descendants (from /proc)."""
    total = 0.0
    for p in tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / CLK_TCK
        except (OSError, IndexError):
            continue
    return total


ALL_TARGETS = ("direct", "aligngate", "baseline", "litellm")
LITELLM_VENV = ROOT / "benchmarks" / ".venv-litellm"
LITELLM_REQUIREMENTS = ["litellm[proxy]==1.100.5", "prometheus_client"]
# Everything that phones home or adds work that is not inherent to proxying, switched off.
LITELLM_ENV = {
    "LITELLM_TELEMETRY": "False",  # usage telemetry (also --telemetry False and litellm_settings.telemetry)
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # use the bundled cost map instead of fetching it from GitHub
    "LITELLM_LOG": "ERROR",
    "LITELLM_MODE": "PRODUCTION",  # do not load a .env file
    "DISABLE_ADMIN_UI": "True",
    "NO_DOCS": "True",
    "NO_REDOC": "True",
}


def start_aligngate(workdir: Path, upstream: str, workers: int, tree: Path | None = None) -> Proc:
    """``aligngate serve`` of this checkout, or of the source tree ``tree`` (its own trace store in its workdir)."""
    config = f"server: {{workers: {workers}}}\nbackends:\n  - name: bench-model\n    urls: [{upstream}]\n"
    if tree is None:
        return start_gateway(workdir, config, timeout_s=60)
    sub = workdir / "baseline"
    sub.mkdir(exist_ok=True)
    proc = start_gateway(sub, config + f"store: {{url: 'sqlite:///{sub / 'aligngate.db'}'}}\n", timeout_s=60,
                         cwd=tree)
    proc.name = "baseline"
    return proc


def ensure_litellm_venv() -> Path:
    """The ``litellm`` executable of the cached venv, building the venv on first use (RuntimeError if that fails)."""
    exe = LITELLM_VENV / "bin" / "litellm"
    stamp = LITELLM_VENV / ".installed"
    wanted = " ".join(LITELLM_REQUIREMENTS)
    if exe.exists() and stamp.exists() and stamp.read_text().strip() == wanted:
        return exe
    print(f"building the LiteLLM venv at {LITELLM_VENV} ({wanted}); this happens once ...", file=sys.stderr)
    steps = [
        [sys.executable, "-m", "venv", str(LITELLM_VENV)],
        [str(LITELLM_VENV / "bin" / "python"), "-m", "pip", "install", "-q", *LITELLM_REQUIREMENTS],
    ]
    for cmd in steps:
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"`{' '.join(cmd)}` failed (exit {proc.returncode}): "
                               f"{(proc.stderr or proc.stdout).strip()[-2000:]}")
    if not exe.exists():
        raise RuntimeError(f"{exe} missing after the install")
    stamp.write_text(wanted + "\n")
    return exe


def start_litellm(workdir: Path, exe: Path, upstream: str, workers: int) -> Proc:
    port = free_port()
    config = workdir / "litellm.yaml"
    config.write_text(
        "model_list:\n"
        "  - model_name: bench-model\n"
        f"    litellm_params: {{model: hosted_vllm/bench-model, api_base: {upstream}, api_key: x}}\n"
        "litellm_settings:\n"
        "  drop_params: true\n"
        "  telemetry: false\n"
        "  set_verbose: false\n"
        "  json_logs: false\n"
        "  turn_off_message_logging: true\n"
        "  num_retries: 0\n"
        "  request_timeout: 600\n"
        "general_settings:\n"
        "  disable_spend_logs: true\n"
        "  disable_error_logs: true\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "STORE_MODEL_IN_DB", "REDIS_HOST",
                                                           "LITELLM_MASTER_KEY", "OPENAI_API_KEY")}
    env.update(LITELLM_ENV)
    log = workdir / "litellm.log"
    popen = subprocess.Popen(
        [str(exe), "--config", str(config), "--host", "127.0.0.1", "--port", str(port),
         "--num_workers", str(workers), "--telemetry", "False"],
        cwd=workdir, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    wait_healthy("litellm", popen, url + "/health/liveliness", log, 180)
    return Proc("litellm", popen, url + "/v1", log)


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


def has_content(data: bytes) -> bool:
    """Whether an SSE chunk carries a non-empty delta content (any JSON spacing: LiteLLM's differs)."""
    if b'"content"' not in data:
        return False
    try:
        choices = json.loads(data).get("choices") or [{}]
        return bool((choices[0].get("delta") or {}).get("content"))
    except (ValueError, AttributeError):
        return False


async def one_stream_ttft(session: aiohttp.ClientSession, url: str) -> float:
    t = time.perf_counter()
    ttft = None
    async with session.post(url + "/chat/completions", data=STREAM_BODY, headers=JSON) as r:
        async for line in r.content:
            if ttft is None and line.startswith(b"data: {") and has_content(line[6:]):
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


def target_pid(name: str, procs: dict[str, Proc]) -> int:
    """The process whose CPU a target's requests cost: the proxy's, or the upstream's for ``direct``."""
    return procs["upstream" if name == "direct" else name].popen.pid


async def measure(args: argparse.Namespace, procs: dict[str, Proc]) -> dict[str, object]:
    urls = {name: procs["upstream" if name == "direct" else name].base_url for name in args.targets}
    out: dict[str, object] = {"targets": list(urls)}

    seq = await sequential(urls, one_chat, args.sequential)
    out["sequential"] = {k: {"p50_ms": pct(r.latencies, 50) * 1e3, "p99_ms": pct(r.latencies, 99) * 1e3}
                         for k, r in seq.items()}

    ttft = await sequential(urls, one_stream_ttft, args.streams, block=20)
    out["ttft"] = {k: {"p50_ms": pct(r.latencies, 50) * 1e3, "p99_ms": pct(r.latencies, 99) * 1e3}
                   for k, r in ttft.items()}

    conc: dict[str, dict[str, dict[str, float]]] = {}
    cpu_s = dict.fromkeys(urls, 0.0)
    cpu_n = dict.fromkeys(urls, 0)
    for c in args.concurrency:
        best: dict[str, Run] = {}
        for _ in range(args.rounds):
            for name, url in urls.items():
                pid = target_pid(name, procs)
                c0 = cpu_seconds(pid)
                run = await concurrent(url, c, args.duration)
                cpu_s[name] += cpu_seconds(pid) - c0
                cpu_n[name] += len(run.latencies)
                if name not in best or run.rps > best[name].rps:
                    best[name] = run
        conc[str(c)] = {
            name: {"rps": r.rps, "p50_ms": pct(r.latencies, 50) * 1e3, "p99_ms": pct(r.latencies, 99) * 1e3,
                   "errors": r.errors}
            for name, r in best.items()
        }
    out["concurrency"] = conc
    # "direct" is the upstream's own CPU per request (when it is called directly)
    out["cpu_us_per_request"] = {("upstream" if k == "direct" else k): cpu_s[k] / max(cpu_n[k], 1) * 1e6
                                 for k in urls}
    return out


# Issue 6's targets
TARGET_ADDED_P50_MS = 1.0
TARGET_ADDED_TTFT_MS = 2.0
TARGET_THROUGHPUT_C32 = 0.70
TARGET_CPU_VS_LITELLM = 1 / 8


def _fmt(v: float | None, spec: str = ".2f") -> str:
    return "n/a" if v is None else format(v, spec)


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def render(res: dict[str, object], args: argparse.Namespace) -> tuple[str, dict[str, object]]:
    targets = res["targets"]
    seq = res["sequential"]
    ttft = res["ttft"]
    conc = res["concurrency"]
    cpu = res["cpu_us_per_request"]
    assert isinstance(targets, list) and isinstance(seq, dict) and isinstance(ttft, dict)
    assert isinstance(conc, dict) and isinstance(cpu, dict)
    proxies = [t for t in targets if t != "direct"]
    has_direct = "direct" in targets
    cmd = " ".join(sys.argv[1:])
    lines = [
        "# Gateway overhead (helpers off)",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}; "
        f"workers per proxy: {args.workers}; fake upstream and load client on the same machine.",
        f"Targets (interleaved): {', '.join(targets)}"
        + (f"; LiteLLM: {' '.join(LITELLM_REQUIREMENTS)}, model `hosted_vllm/bench-model`" if "litellm" in targets
           else "") + ".",
        f"Command: `python benchmarks/gateway_overhead.py{' ' + cmd if cmd else ''}`",
        "",
    ]
    cols = ["measure", *targets, *(f"{t} added" for t in proxies if has_direct)]
    lines += ["| " + " | ".join(cols) + " |", "|---|" + "---:|" * (len(cols) - 1)]
    for label, table in (("sequential", seq), ("stream first token", ttft)):
        for q in ("p50_ms", "p99_ms"):
            row = [f"{table[t][q]:.3f}" for t in targets]
            if has_direct:
                row += [f"{table[t][q] - table['direct'][q]:+.3f}" for t in proxies]
            lines.append(f"| {label} {q[:3]} (ms) | " + " | ".join(row) + " |")
    head = ["concurrency"] + [f"{t} req/s" for t in targets]
    if has_direct:
        head += [f"{t}/direct" for t in proxies]
    if "aligngate" in targets and "litellm" in targets:
        head.append("aligngate/litellm")
    head += [f"{t} p50/p99 ms" for t in targets] + ["errors"]
    lines += ["", "| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
    for c, row in conc.items():
        cells = [c] + [f"{row[t]['rps']:.0f}" for t in targets]
        if has_direct:
            cells += [f"{row[t]['rps'] / row['direct']['rps']:.2f}" for t in proxies]
        if "aligngate" in targets and "litellm" in targets:
            cells.append(f"{row['aligngate']['rps'] / row['litellm']['rps']:.2f}")
        cells += [f"{row[t]['p50_ms']:.2f}/{row[t]['p99_ms']:.2f}" for t in targets]
        cells.append(str(sum(int(row[t]["errors"]) for t in targets)))
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "CPU per request (all of a target's processes, workers included): "
              + ", ".join(f"{k} {v:.0f} µs" for k, v in cpu.items()) + "."]

    # summary: what aligngate adds over direct, and how that compares with LiteLLM
    def added(table: dict[str, dict[str, float]], t: str, q: str = "p50_ms") -> float | None:
        return table[t][q] - table["direct"][q] if has_direct and t in table else None

    def rps_ratio(t: str, c: str = "32") -> float | None:
        return conc[c][t]["rps"] / conc[c]["direct"]["rps"] if has_direct and c in conc and t in conc[c] else None

    summary: dict[str, object] = {}
    if "aligngate" in targets:
        summary.update({
            "added_p50_ms_sequential": added(seq, "aligngate"),
            "added_p99_ms_sequential": added(seq, "aligngate", "p99_ms"),
            "added_ttft_p50_ms": added(ttft, "aligngate"),
            "aligngate_cpu_us_per_request": cpu["aligngate"],
        })
        if has_direct:
            for c, row in conc.items():
                summary[f"throughput_ratio_c{c}"] = row["aligngate"]["rps"] / row["direct"]["rps"]
                summary[f"added_p50_ms_c{c}"] = row["aligngate"]["p50_ms"] - row["direct"]["p50_ms"]
                summary[f"added_p99_ms_c{c}"] = row["aligngate"]["p99_ms"] - row["direct"]["p99_ms"]
            summary["aligngate_over_direct_p50_sequential"] = seq["aligngate"]["p50_ms"] / seq["direct"]["p50_ms"]
            summary["aligngate_over_direct_cpu_per_request"] = cpu["aligngate"] / cpu["upstream"]
    if "litellm" in targets:
        summary.update({
            "litellm_added_p50_ms_sequential": added(seq, "litellm"),
            "litellm_added_ttft_p50_ms": added(ttft, "litellm"),
            "litellm_throughput_ratio_c32": rps_ratio("litellm"),
            "litellm_cpu_us_per_request": cpu["litellm"],
        })
    if "aligngate" in targets and "litellm" in targets:
        summary.update({
            "aligngate_over_litellm_added_p50_sequential": _ratio(added(seq, "aligngate"), added(seq, "litellm")),
            "aligngate_over_litellm_added_ttft_p50": _ratio(added(ttft, "aligngate"), added(ttft, "litellm")),
            "aligngate_over_litellm_throughput_c32":
                _ratio(conc["32"]["aligngate"]["rps"], conc["32"]["litellm"]["rps"]) if "32" in conc else None,
            "aligngate_over_litellm_cpu_per_request": cpu["aligngate"] / cpu["litellm"],
        })

    if "aligngate" in targets and "baseline" in targets:
        summary.update({
            "baseline_cpu_us_per_request": cpu["baseline"],
            "aligngate_over_baseline_cpu_per_request": cpu["aligngate"] / cpu["baseline"],
            "baseline_added_p50_ms_sequential": added(seq, "baseline"),
            "baseline_added_ttft_p50_ms": added(ttft, "baseline"),
            "aligngate_over_baseline_throughput_c32":
                _ratio(conc["32"]["aligngate"]["rps"], conc["32"]["baseline"]["rps"]) if "32" in conc else None,
        })
        lines += ["", f"Against the baseline tree: CPU per request {cpu['aligngate']:.0f} vs {cpu['baseline']:.0f} µs "
                  f"(ratio {cpu['aligngate'] / cpu['baseline']:.3f})."]

    # Issue 6's targets
    checks: list[tuple[str, str, float | None, bool | None]] = []
    if "aligngate" in targets:
        a_p50, a_ttft, thr = added(seq, "aligngate"), added(ttft, "aligngate"), rps_ratio("aligngate")
        checks += [
            ("added p50 sequential ≤ 1 ms", "target_added_p50_le_1ms", a_p50,
             None if a_p50 is None else a_p50 <= TARGET_ADDED_P50_MS),
            ("added stream first token p50 ≤ 2 ms", "target_added_ttft_le_2ms", a_ttft,
             None if a_ttft is None else a_ttft <= TARGET_ADDED_TTFT_MS),
            ("throughput at c32 ≥ 70% of direct", "target_throughput_c32_ge_0.7", thr,
             None if thr is None else thr >= TARGET_THROUGHPUT_C32),
        ]
        cpu_r = cpu["aligngate"] / cpu["litellm"] if "litellm" in cpu else None
        checks.append(("CPU per request ≤ 1/8 of LiteLLM's", "target_cpu_le_eighth_of_litellm", cpu_r,
                       None if cpu_r is None else cpu_r <= TARGET_CPU_VS_LITELLM))
        lines += ["", "| issue 6 target | measured | pass |", "|---|---:|:---:|"]
        for label, key, value, ok in checks:
            lines.append(f"| {label} | {_fmt(value, '.3f')} | {'n/a' if ok is None else ('yes' if ok else 'NO')} |")
            summary[key] = ok
    lines.append("")
    return "\n".join(lines), summary


def plot(res: dict[str, object], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    conc = res["concurrency"]
    targets = res["targets"]
    assert isinstance(conc, dict) and isinstance(targets, list)
    levels = list(conc)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for name in targets:
        ax1.plot(levels, [conc[c][name]["rps"] for c in levels], marker="o", label=name)
        ax2.plot(levels, [conc[c][name]["p99_ms"] for c in levels], marker="o", label=name)
    ax1.set(title="Throughput", xlabel="concurrency", ylabel="requests/s")
    ax2.set(title="p99 latency", xlabel="concurrency", ylabel="ms")
    ax2.set_yscale("log")
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
    parser.add_argument("--targets", nargs="+", choices=ALL_TARGETS, default=list(ALL_TARGETS),
                        help="what to measure, interleaved (default: all; baseline needs --baseline-tree)")
    parser.add_argument("--baseline-tree", type=Path, default=None,
                        help="a source tree of aligngate to measure beside this one (target 'baseline')")
    parser.add_argument("--no-litellm", action="store_true", help="skip LiteLLM (e.g. when its venv cannot be built)")
    args = parser.parse_args()
    if args.quick:
        args.sequential, args.streams, args.rounds, args.duration = 300, 60, 1, 1.0
    args.targets = [t for t in ALL_TARGETS if t in args.targets and not (t == "litellm" and args.no_litellm)
                    and not (t == "baseline" and args.baseline_tree is None)]
    if not args.targets:
        parser.error("no targets left to measure")

    litellm_exe: Path | None = None
    if "litellm" in args.targets:
        try:
            litellm_exe = ensure_litellm_venv()
        except (RuntimeError, OSError) as exc:
            print(f"LiteLLM SKIPPED: could not build its venv ({exc}). Measuring without it; "
                  "use --no-litellm to silence this.", file=sys.stderr)
            args.targets.remove("litellm")

    with tempfile.TemporaryDirectory(prefix="aligngate-bench-") as tmp:
        workdir = Path(tmp)
        procs: dict[str, Proc] = {}
        try:
            procs["upstream"] = start_fake(workdir, "upstream")
            if "aligngate" in args.targets:
                procs["aligngate"] = start_aligngate(workdir, procs["upstream"].base_url, args.workers)
            if "baseline" in args.targets:
                procs["baseline"] = start_aligngate(workdir, procs["upstream"].base_url, args.workers,
                                                    args.baseline_tree)
            if litellm_exe is not None and "litellm" in args.targets:
                try:
                    procs["litellm"] = start_litellm(workdir, litellm_exe, procs["upstream"].base_url, args.workers)
                except RuntimeError as exc:
                    print(f"LiteLLM SKIPPED: the proxy did not start ({exc})", file=sys.stderr)
                    args.targets.remove("litellm")
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
    line = {k: round(v, 4) if isinstance(v, float) else v for k, v in summary.items()}
    print(json.dumps({"benchmark": "gateway_overhead", "targets": args.targets, **line}))


if __name__ == "__main__":
    main()
