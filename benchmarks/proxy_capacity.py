"""Proxy capacity per core: the floor, aligngate under uvicorn and under granian, and LiteLLM, each proxy pinned to
its own core.

Each proxy runs pinned to CPU 0 (every thread of it and of its worker processes); the fake upstream and the load
generator, ``wrk`` (a C program, Debian package ``wrk``: it costs the shared core little, unlike a Python client)
are pinned to CPU 1, so the proxy's core does nothing else. The targets, measured round by round in rotating
order so that machine noise hits all alike:

* ``floor``: ``benchmarks/floor_proxy.py``, a raw ASGI + aiohttp pass-through under uvicorn (uvloop, httptools):
  what any Python proxy on this stack costs;
* ``aligngate``: ``aligngate serve`` (uvicorn, uvloop, httptools), helpers off, the trace store on (SQLite);
* ``aligngate-no-store``: the same with ``store.enabled: false`` (what the store costs);
* ``granian``: the same app and settings (``gateway.app:app_from_env``) under granian (Rust HTTP, ASGI, uvloop);
* ``litellm``: the LiteLLM proxy (its own venv, as in ``benchmarks/gateway_overhead.py``), with ``--litellm``.

For each: the proxy's CPU time per request (all its processes, from /proc) and its inverse, **requests per
proxy-core-second** (the capacity of one core spent on proxying), with ratios to the floor; and, for the record,
requests per second at concurrency ``--concurrency`` and how busy the proxy's core was (a proxy whose core is not
saturated is held back by the upstream and the client on the other core, so its req/s is not its capacity).
``--baseline-tree DIR`` adds ``baseline``: ``aligngate serve`` (store on) run from another source tree, e.g. a worktree
of the previous commit (``git worktree add ../base HEAD~1``), to measure a change side by side in one run.
``--scale`` measures ``aligngate serve --workers 1``
against ``--workers 2``, the proxy pinned to both cores (this machine has two, so the client and the upstream
share them: a lower bound on what a second core gives).

Prints a table, writes ``benchmarks/results/proxy_capacity.md`` and ends with one JSON line.

    python benchmarks/proxy_capacity.py [--rounds 5] [--duration 5] [--concurrency 32] [--litellm] [--scale]
        [--baseline-tree DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from gateway_overhead import CHAT_BODY, cpu_seconds, ensure_litellm_venv, start_litellm
from procs import ROOT, Proc, free_port, start_fake, start_gateway, tree, wait_healthy

RESULTS = ROOT / "benchmarks" / "results"
PROXY_CPUS = {0}
LOAD_CPUS = {1}
#: The issue's targets: aligngate's CPU per request at most 1.15x the floor's, requests per proxy-core-second at
#: least 0.85x the floor's.
CPU_TARGET = 1.15
RPS_TARGET = 0.85


def pin(pid: int, cpus: set[int]) -> None:
    """Every thread of ``pid`` and of its descendants onto ``cpus`` (threads started later inherit it)."""
    for p in tree(pid):
        try:
            tids = [int(t) for t in os.listdir(f"/proc/{p}/task")]
        except OSError:
            continue
        for tid in tids:
            with contextlib.suppress(OSError):
                os.sched_setaffinity(tid, cpus)


def aligngate_config(workdir: Path, upstream: str, workers: int, store: bool = True) -> Path:
    path = workdir / "gateway.yaml"
    store_line = f"store: {{url: 'sqlite:///{workdir / 'aligngate.db'}'}}" if store else "store: {enabled: false}"
    path.write_text(
        f"server: {{workers: {workers}}}\nbackends:\n  - name: bench-model\n    urls: [{upstream}]\n{store_line}\n"
    )
    return path


def start_aligngate(
    workdir: Path, upstream: str, workers: int, name: str, store: bool = True, tree: Path = ROOT
) -> Proc:
    workdir.mkdir()
    config = aligngate_config(workdir, upstream, workers, store)
    proc = start_gateway(workdir, config.read_text(), timeout_s=60, cwd=tree)
    proc.name = name
    return proc


def start_granian(workdir: Path, upstream: str) -> Proc:
    workdir.mkdir()
    config = aligngate_config(workdir, upstream, 1)
    port = free_port()
    env = {
        **os.environ,
        "ALIGNGATE_CONFIG": str(config),
        "PYTHONPATH": os.pathsep.join([str(ROOT / "benchmarks"), str(ROOT)]),
    }
    cmd = [
        sys.executable,
        "-m",
        "granian",
        "--interface",
        "asgi",
        "--loop",
        "uvloop",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--no-access-log",
        "--log-level",
        "warning",
        "granian_app:app",
    ]
    log = workdir / "granian.log"
    popen = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=log.open("wb"))
    url = f"http://127.0.0.1:{port}"
    wait_healthy("granian", popen, url + "/healthz", log, 60)
    return Proc("granian", popen, url + "/v1", log)


def start_floor(workdir: Path, upstream: str) -> Proc:
    workdir.mkdir()
    port = free_port()
    env = {**os.environ, "FLOOR_UPSTREAM": upstream}
    cmd = [
        sys.executable,
        "-m",
        "uvicorn",
        "floor_proxy:app",
        "--app-dir",
        str(ROOT / "benchmarks"),
        "--loop",
        "uvloop",
        "--http",
        "httptools",
        "--no-access-log",
        "--log-level",
        "warning",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    log = workdir / "floor.log"
    popen = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=log.open("wb"))
    url = f"http://127.0.0.1:{port}"
    wait_healthy("floor", popen, url + "/healthz", log, 60)
    return Proc("floor", popen, url + "/v1", log)


@dataclass
class Sample:
    rps: float
    cpu_us: float  # proxy CPU per request
    util: float  # proxy CPU seconds per wall second
    errors: int


@dataclass
class Series:
    samples: list[Sample] = field(default_factory=list)

    def median(self, attr: str) -> float:
        return statistics.median(getattr(s, attr) for s in self.samples)


def wrk(url: str, script: Path, concurrency: int, duration: float, cpus: set[int] | None) -> tuple[int, float, int]:
    """(requests, requests per second, errors) of one ``wrk`` run against ``url``."""
    cmd = ["wrk", "-t1", f"-c{concurrency}", f"-d{duration:g}s", "-s", str(script), url + "/chat/completions"]
    if cpus is not None:
        cmd = ["taskset", "-c", ",".join(map(str, sorted(cpus))), *cmd]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    errors = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses: (\d+)", out))
    errors += sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    return requests, rps, errors


def run_one(proc: Proc, script: Path, args: argparse.Namespace, load_cpus: set[int] | None) -> Sample:
    pid = proc.popen.pid
    c0, t0 = cpu_seconds(pid), time.perf_counter()
    requests, rps, errors = wrk(proc.base_url, script, args.concurrency, args.duration, load_cpus)
    cpu, wall = cpu_seconds(pid) - c0, time.perf_counter() - t0
    return Sample(rps=rps, cpu_us=cpu / max(requests, 1) * 1e6, util=cpu / wall, errors=errors)


def measure(
    procs: dict[str, Proc], script: Path, args: argparse.Namespace, load_cpus: set[int] | None
) -> dict[str, Series]:
    series = {name: Series() for name in procs}
    names = list(procs)
    for name in names:  # warm-up
        wrk(procs[name].base_url, script, args.concurrency, 1.0, load_cpus)
    for r in range(args.rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            series[name].samples.append(run_one(procs[name], script, args, load_cpus))
    return series


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--litellm", action="store_true", help="add the LiteLLM proxy (builds its venv once)")
    parser.add_argument("--scale", action="store_true", help="also aligngate --workers 1 vs 2 on both cores")
    parser.add_argument("--baseline-tree", type=Path, help="also aligngate from this source tree (a worktree)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get install wrk (Debian package)")
    if len(os.sched_getaffinity(0)) < 2:
        sys.exit("needs two CPUs: one for the proxy, one for the client and the upstream")

    with tempfile.TemporaryDirectory(prefix="aligngate-capacity-") as tmp:
        workdir = Path(tmp)
        script = workdir / "post.lua"
        body = CHAT_BODY.decode().replace("\\", "\\\\").replace('"', '\\"')
        script.write_text(
            f'wrk.method = "POST"\nwrk.body = "{body}"\nwrk.headers["Content-Type"] = "application/json"\n'
        )
        procs: dict[str, Proc] = {}
        started: list[Proc] = []
        try:
            upstream = start_fake(workdir, "upstream")
            started.append(upstream)
            pin(upstream.popen.pid, LOAD_CPUS)
            procs["floor"] = start_floor(workdir / "floor", upstream.base_url)
            procs["aligngate"] = start_aligngate(workdir / "aligngate", upstream.base_url, 1, "aligngate")
            procs["aligngate-no-store"] = start_aligngate(
                workdir / "no-store", upstream.base_url, 1, "aligngate-no-store", store=False
            )
            procs["granian"] = start_granian(workdir / "granian", upstream.base_url)
            if args.baseline_tree is not None:
                procs["baseline"] = start_aligngate(
                    workdir / "baseline", upstream.base_url, 1, "baseline", tree=args.baseline_tree.resolve()
                )
            if args.litellm:
                (workdir / "litellm").mkdir()
                procs["litellm"] = start_litellm(workdir / "litellm", ensure_litellm_venv(), upstream.base_url, 1)
            started += procs.values()
            for proc in procs.values():
                pin(proc.popen.pid, PROXY_CPUS)
            pinned = measure(procs, script, args, LOAD_CPUS)
            scaled: dict[str, Series] = {}
            if args.scale:
                for proc in procs.values():
                    proc.stop()
                both = PROXY_CPUS | LOAD_CPUS
                pin(upstream.popen.pid, both)
                scale = {
                    "workers-1": start_aligngate(workdir / "w1", upstream.base_url, 1, "workers-1"),
                    "workers-2": start_aligngate(workdir / "w2", upstream.base_url, 2, "workers-2"),
                }
                started += scale.values()
                time.sleep(2.0)  # the second worker
                for proc in scale.values():
                    pin(proc.popen.pid, both)
                scaled = measure(scale, script, args, None)
        finally:
            for proc in reversed(started):
                proc.stop()

    floor = pinned["floor"]
    lines = [
        "# Proxy capacity per core",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}. Command: "
        f"`python benchmarks/proxy_capacity.py {' '.join(sys.argv[1:])}`. Each proxy pinned to CPU 0; the fake "
        f"upstream and `wrk -t1 -c{args.concurrency}` pinned to CPU 1; {args.rounds} rounds of {args.duration:g} s "
        "per target, rotating order; medians. Non-streamed chat completions (16 tokens).",
        "",
        "| target | proxy CPU per request (µs) | vs floor | requests per proxy-core-second | vs floor | req/s | "
        "proxy core busy | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    summary: dict[str, object] = {"benchmark": "proxy_capacity", "concurrency": args.concurrency, "rounds": args.rounds}
    for name, s in pinned.items():
        rps, cpu = s.median("rps"), s.median("cpu_us")
        cpu_ratio = cpu / floor.median("cpu_us")
        errors = sum(x.errors for x in s.samples)
        lines.append(
            f"| {name} | {cpu:.0f} | {cpu_ratio:.2f} | {1e6 / cpu:.0f} | {1 / cpu_ratio:.2f} | {rps:.0f} | "
            f"{s.median('util') * 100:.0f}% | {errors} |"
        )
        summary[name] = {
            "cpu_us_per_request": round(cpu, 1),
            "per_core_second": round(1e6 / cpu, 1),
            "cpu_vs_floor": round(cpu_ratio, 3),
            "rps": round(rps, 1),
            "errors": errors,
        }
    best = min(("aligngate", "granian"), key=lambda n: pinned[n].median("cpu_us"))
    a_cpu = pinned[best].median("cpu_us") / floor.median("cpu_us")
    a_rps = 1 / a_cpu
    met = {"cpu_le_1_15x_floor": a_cpu <= CPU_TARGET, "rps_ge_0_85x_floor": a_rps >= RPS_TARGET}
    lines += [
        "",
        "| target | measured (the better server) | |",
        "|---|---:|---|",
        f"| aligngate CPU per request ≤ {CPU_TARGET}x the floor's | {a_cpu:.2f}x ({best}) | "
        f"{'met' if met['cpu_le_1_15x_floor'] else '**not met**'} |",
        f"| aligngate requests per proxy-core-second ≥ {RPS_TARGET}x the floor's | {a_rps:.2f}x ({best}) | "
        f"{'met' if met['rps_ge_0_85x_floor'] else '**not met**'} |",
    ]
    if "baseline" in pinned:
        paired = statistics.median(
            a.cpu_us / b.cpu_us for a, b in zip(pinned["aligngate"].samples, pinned["baseline"].samples, strict=True)
        )
        lines += ["", f"aligngate / baseline (`{args.baseline_tree}`), CPU per request, median of per-round ratios: "
                      f"{paired:.2f}x."]
        summary["aligngate_vs_baseline_cpu"] = round(paired, 3)
    summary.update(
        {"faster_server": best, "cpu_vs_floor": round(a_cpu, 3), "rps_vs_floor": round(a_rps, 3), "targets_met": met}
    )
    if scaled:
        w1, w2 = scaled["workers-1"].median("rps"), scaled["workers-2"].median("rps")
        lines += [
            "",
            "Scale-out, proxy pinned to both CPUs (shared with the upstream and `wrk`):",
            "",
            "| aligngate | req/s | proxy CPU per request (µs) | proxy CPU busy (of 2) |",
            "|---|---:|---:|---:|",
        ]
        for name, s in scaled.items():
            lines.append(
                f"| {name} | {s.median('rps'):.0f} | {s.median('cpu_us'):.0f} | {s.median('util') * 100:.0f}% |"
            )
        lines += ["", f"`--workers 2` / `--workers 1`: {w2 / w1:.2f}x."]
        summary["workers_2_over_1"] = round(w2 / w1, 3)
    lines.append("")
    text = "\n".join(lines)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "proxy_capacity.md").write_text(text)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
