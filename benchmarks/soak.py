"""Soak and faults: a long mixed workload through aligngate with the trace store on, and a worker killed mid-run.

Starts the fake OpenAI-compatible upstream (``tests/fakes/upstream.py``) and ``aligngate serve`` (the ``control``
arm, no helpers; the trace store on a SQLite file) as their own processes, then sends ``--requests`` requests at
``--concurrency`` from this process (asyncio + aiohttp), in a fixed cycle of 20:

* 9 ``chat``: non-streamed chat completions (200, one row each);
* 6 ``stream``: streamed chat completions read to ``[DONE]`` (200, one row each);
* 2 ``bad``: refused by the gateway's own checks, before an arm is chosen (400, no row: the README's "Trace
  store" keeps a row for each request that got an arm); one body is not JSON, one has no ``messages``;
* 1 ``upstream_400``: valid, but the upstream answers 400 (relayed as 400, one row);
* 2 ``disconnect``: streamed; the upstream sends its first event, then waits 30 s; the client reads that event and
  closes the connection mid-stream (one row, outcome ``client_disconnected``).

Meanwhile it samples the RSS of the gateway's processes (``/proc``) every 0.25 s. At the end it stops the gateway
(SIGTERM: the store writes what is queued), counts the rows by status and outcome and matches their ids with
the ``X-Request-Id`` of every answer the client got.

``--workers 2 --kill-at 0.5``: when half the requests are done one worker is killed with SIGKILL. The script
reports how soon the supervisor started a replacement, which requests failed (and whether any of them started
after the kill), and the rows lost: answers the client got whose rows are missing: the killed worker's records
still in its in-memory queue (at most ``store.flush_interval_s`` of its answers), with how long before the kill
the newest and oldest of them were answered.

Prints a table, writes ``benchmarks/results/soak/<name>.md`` and ``<name>.json`` and ends with one JSON line.
Run: ``python benchmarks/soak.py [--requests 50000] [--concurrency 32] [--workers 1] [--kill-at F]``.
Why a Python client and not ``wrk``: ``wrk`` would cost the shared cores less, but it cannot close a stream
after its first chunk, nor tell the client's tally apart by kind and request id, which is the point here.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import platform
import signal
import sqlite3
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from procs import ROOT, Proc, start_fake, start_gateway

RESULTS = ROOT / "benchmarks" / "results" / "soak"
MODEL = "soak-model"
JSON = {"Content-Type": "application/json"}
PAGE = os.sysconf("SC_PAGE_SIZE")


def _body(obj: dict[str, object]) -> bytes:
    return json.dumps(obj).encode()


BODIES: dict[str, list[bytes]] = {
    "chat": [_body({"model": MODEL, "messages": [{"role": "user", "content": "Say hello in five words."}],
                    "max_tokens": 16})],
    "stream": [_body({"model": MODEL, "messages": [{"role": "user", "content": "Say hello."}], "stream": True,
                      "fake": {"n_words": 20}})],
    "bad": [b'{"model": "soak-model", "messages": [', _body({"model": MODEL, "max_tokens": 4})],
    "upstream_400": [_body({"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
                            "fake": {"mode": "error", "status": 400}})],
    # the upstream sends its first event, then waits 30 s: the client is gone long before the end, whatever the load
    "disconnect": [_body({"model": MODEL, "messages": [{"role": "user", "content": "Count."}], "stream": True,
                          "fake": {"mode": "hang", "delay_s": 30, "n_words": 5}})],
}
CYCLE = ["chat"] * 9 + ["stream"] * 6 + ["bad"] * 2 + ["upstream_400"] + ["disconnect"] * 2
EXPECTED_STATUS = {"chat": 200, "stream": 200, "bad": 400, "upstream_400": 400, "disconnect": 200}
ROW_KINDS = {"chat", "stream", "upstream_400", "disconnect"}  # the kinds that get an arm, hence a row


@dataclass
class Outcome:
    kind: str
    start: float
    end: float = 0.0
    status: int | None = None
    request_id: str | None = None
    arm: str | None = None
    error: str | None = None


@dataclass
class Sample:
    t: float
    done: int
    rss: dict[int, int]  # pid -> bytes


@dataclass
class State:
    outcomes: list[Outcome] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    done: int = 0
    kill_t: float | None = None
    killed_pid: int | None = None
    replaced_t: float | None = None
    replacement_pid: int | None = None


# ------------------------------------------------------------------ processes


def children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def workers_of(pid: int) -> list[int]:
    """The worker processes of a supervising ``aligngate serve`` (multiprocessing spawn children; not its
    resource tracker)."""
    out = []
    for c in children(pid):
        try:
            cmd = Path(f"/proc/{c}/cmdline").read_bytes()
        except OSError:
            continue
        if b"spawn_main" in cmd:
            out.append(c)
    return out


def rss_bytes(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
    except (OSError, IndexError, ValueError):
        return None


def serving_pids(root: int, workers: int) -> list[int]:
    """The processes that serve requests: the gateway itself (one worker) or its workers."""
    return [root] if workers == 1 else workers_of(root)


def sampler(state: State, root: int, workers: int, stop: threading.Event, every_s: float) -> None:
    while not stop.wait(every_s):
        rss = {p: r for p in serving_pids(root, workers) if (r := rss_bytes(p)) is not None}
        state.samples.append(Sample(time.monotonic(), state.done, rss))


# ------------------------------------------------------------------ the client


async def one(session: aiohttp.ClientSession, url: str, kind: str, body: bytes, limit: aiohttp.ClientTimeout,
              ) -> Outcome:
    out = Outcome(kind, time.monotonic())
    try:
        async with session.post(url, data=body, headers=JSON, timeout=limit) as r:
            out.status = r.status
            out.request_id = r.headers.get("x-request-id")
            out.arm = r.headers.get("x-aligngate-arm")
            if kind == "disconnect" and r.status == 200:
                async for line in r.content:
                    if line.startswith(b"data: {"):
                        break
                else:
                    out.error = "stream ended before its first event"
                r.close()  # drops the connection mid-stream
            else:
                data = await r.read()
                if kind == "stream" and r.status == 200 and not data.rstrip().endswith(b"data: [DONE]"):
                    out.error = "stream without [DONE]"
    except (TimeoutError, aiohttp.ClientError) as exc:
        out.error = f"{type(exc).__name__}: {exc}"[:200]
    out.end = time.monotonic()
    return out


async def drive(args: argparse.Namespace, state: State, url: str, kill: Callable[[], None] | None) -> float:
    counters = collections.Counter[str]()
    timeout = aiohttp.ClientTimeout(total=60)
    kill_at = int(args.requests * args.kill_at) if kill is not None else -1
    next_i = 0

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal next_i
        while next_i < args.requests:
            i = next_i
            next_i += 1
            kind = CYCLE[i % len(CYCLE)]
            bodies = BODIES[kind]
            body = bodies[counters[kind] % len(bodies)]
            counters[kind] += 1
            out = await one(session, url, kind, body, timeout)
            state.outcomes.append(out)
            state.done += 1
            if state.done == kill_at and kill is not None:
                kill()

    connector = aiohttp.TCPConnector(limit=args.concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        t0 = time.monotonic()
        await asyncio.gather(*(worker(session) for _ in range(args.concurrency)))
        return time.monotonic() - t0


# ------------------------------------------------------------------ the store


def stored(db: Path) -> tuple[collections.Counter[tuple[int, str]], set[str]]:
    with sqlite3.connect(db) as conn:
        by = collections.Counter({(int(s), str(o)): int(n) for s, o, n in conn.execute(
            "SELECT status, coalesce(outcome, 'ok'), count(*) FROM requests GROUP BY 1, 2")})
        ids = {str(r[0]) for r in conn.execute("SELECT id FROM requests")}
    return by, ids


# ------------------------------------------------------------------ the run


def mib(n: float) -> str:
    return f"{n / 2**20:.1f}"


def rss_report(state: State, total: int) -> dict[str, object]:
    """RSS of the serving processes after warm-up (10% of the requests) and at the end; growth of each process
    alive at both points, and of their sum."""
    samples = [s for s in state.samples if s.rss]
    warm = next((s for s in samples if s.done >= total * 0.1), None)
    end = samples[-1] if samples else None
    if warm is None or end is None:
        return {}
    both = [p for p in warm.rss if p in end.rss]
    per = {str(p): {"warm_mib": round(warm.rss[p] / 2**20, 1), "end_mib": round(end.rss[p] / 2**20, 1),
                    "growth_pct": round((end.rss[p] - warm.rss[p]) / warm.rss[p] * 100, 2)} for p in both}
    warm_sum, end_sum = sum(warm.rss.values()), sum(end.rss.values())
    after = [sum(s.rss.values()) for s in samples if s.t >= warm.t]
    # the sum at each tenth of the run (the first sample at or past it): the shape of any growth
    tenths = [next((sum(s.rss.values()) for s in samples if s.done >= total * k / 10), end_sum) for k in range(1, 11)]
    return {
        "warm_done": warm.done, "end_done": end.done,
        "warm_mib": round(warm_sum / 2**20, 1), "end_mib": round(end_sum / 2**20, 1),
        "peak_after_warm_mib": round(max(after) / 2**20, 1),
        "tenths_mib": [round(v / 2**20, 1) for v in tenths],
        "growth_pct": round((end_sum - warm_sum) / warm_sum * 100, 2),
        "max_growth_pct_of_a_process": max((v["growth_pct"] for v in per.values()), default=None),
        "per_process": per, "samples": len(samples),
    }


def run(args: argparse.Namespace) -> dict[str, object]:
    state = State()
    with tempfile.TemporaryDirectory(prefix="aligngate-soak-") as tmp:
        workdir = Path(tmp)
        db = workdir / "soak.db"
        upstream = start_fake(workdir, "upstream")
        gateway: Proc | None = None
        try:
            config = (f"server: {{workers: {args.workers}}}\n"
                      f"backends:\n  - name: {MODEL}\n    urls: [{upstream.base_url}]\n"
                      f"store: {{url: 'sqlite:///{db}'}}\n")
            gateway = start_gateway(workdir, config, timeout_s=120)
            root = gateway.popen.pid
            if args.workers > 1:  # every worker up before the clock starts
                deadline = time.monotonic() + 60
                while len(workers_of(root)) < args.workers and time.monotonic() < deadline:
                    time.sleep(0.1)
            first_workers = serving_pids(root, args.workers)
            stop = threading.Event()
            watcher = threading.Thread(target=sampler, args=(state, root, args.workers, stop, 0.25), daemon=True)
            watcher.start()

            def kill() -> None:
                victim = workers_of(root)[0]
                state.killed_pid, state.kill_t = victim, time.monotonic()
                os.kill(victim, signal.SIGKILL)

                def await_replacement() -> None:
                    deadline = time.monotonic() + 60
                    while time.monotonic() < deadline:
                        new = [p for p in workers_of(root) if p not in first_workers]
                        if new:
                            state.replacement_pid, state.replaced_t = new[0], time.monotonic()
                            return
                        time.sleep(0.02)

                threading.Thread(target=await_replacement, daemon=True).start()

            try:
                import uvloop

                loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = uvloop.new_event_loop
            except ImportError:
                loop_factory = None
            with asyncio.Runner(loop_factory=loop_factory) as runner:
                wall = runner.run(drive(args, state, gateway.base_url + "/chat/completions",
                                        kill if args.kill_at is not None else None))
            time.sleep(0.3)  # one more RSS sample after the last request
            stop.set()
            watcher.join()
            alive_workers = serving_pids(root, args.workers)
            t_stop = time.monotonic()
            gateway.stop()
            shutdown_s = time.monotonic() - t_stop
            exit_code = gateway.popen.returncode
            spill_left = sorted(p.name for p in workdir.glob("soak.db.spill*"))
            by_outcome, ids = stored(db)
        finally:
            if gateway is not None:
                gateway.stop()
            upstream.stop()
    return {"state": state, "wall_s": wall, "by_outcome": by_outcome, "ids": ids, "shutdown_s": shutdown_s,
            "exit_code": exit_code, "spill_left": spill_left, "first_workers": first_workers,
            "alive_workers": alive_workers}


def analyse(args: argparse.Namespace, res: dict[str, object]) -> tuple[str, dict[str, object]]:
    state = res["state"]
    by_outcome = res["by_outcome"]
    ids = res["ids"]
    assert isinstance(state, State) and isinstance(by_outcome, collections.Counter) and isinstance(ids, set)
    outs = state.outcomes
    n = len(outs)
    wall = float(res["wall_s"])  # type: ignore[arg-type]
    status_by_kind: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for o in outs:
        status_by_kind[o.kind]["failed" if o.error is not None else str(o.status)] += 1
    statuses = collections.Counter(o.status for o in outs if o.status is not None)
    five_xx = sum(v for s, v in statuses.items() if s >= 500)
    # failed: no answer, or one cut short (a stream without [DONE], a body not complete)
    failed = [o for o in outs if o.error is not None]
    wrong = [o for o in outs if o.status is not None and o.status != EXPECTED_STATUS[o.kind]]
    answered = [o for o in outs if o.kind in ROW_KINDS and o.error is None]
    arms = collections.Counter(o.arm for o in answered)
    # rows the client's tally predicts: every whole answer of a kind that gets an arm
    expected = {o.request_id for o in answered if o.request_id}
    served = collections.Counter(o.kind for o in answered)
    missing = expected - ids
    extra = ids - expected
    by_id = {o.request_id: o for o in outs if o.request_id}
    predicted = {
        "ok (200)": served["chat"] + served["stream"] - sum(1 for i in missing if by_id[i].kind in ("chat", "stream")),
        "upstream 400": served["upstream_400"] - sum(1 for i in missing if by_id[i].kind == "upstream_400"),
        "client_disconnected": served["disconnect"] - sum(1 for i in missing if by_id[i].kind == "disconnect"),
    }
    got = {
        "ok (200)": sum(v for (s, o), v in by_outcome.items() if s == 200 and o == "ok"),
        "upstream 400": sum(v for (s, _), v in by_outcome.items() if s == 400),
        "client_disconnected": sum(v for (_, o), v in by_outcome.items() if o == "client_disconnected"),
    }
    rss = rss_report(state, args.requests)
    lines = [
        f"# Soak: {args.requests} mixed requests, concurrency {args.concurrency}, {args.workers} worker(s)"
        + (f", one worker SIGKILLed at {args.kill_at:.0%}" if args.kill_at is not None else ""),
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}; load client "
        "(this script, asyncio + aiohttp), fake upstream and gateway on the same machine. Gateway: `control` arm, "
        "trace store on SQLite (defaults: batch 200, flush_interval_s 0.2).",
        f"Command: `python benchmarks/soak.py {' '.join(sys.argv[1:])}`".replace(" `", " `", 1),
        "",
        f"Wall {wall:.1f} s, {n / wall:.0f} requests/s (throughput is the shared machine's, not a target).",
        "",
        "| kind | sent | answered (by status) | failed |",
        "|---|---:|---|---:|",
    ]
    for kind in ("chat", "stream", "bad", "upstream_400", "disconnect"):
        c = status_by_kind[kind]
        lines.append(f"| {kind} | {sum(c.values())} | "
                     + ", ".join(f"{s}: {v}" for s, v in sorted(c.items()) if s != "failed")
                     + f" | {c['failed']} |")
    lines += ["", "| stored rows (after shutdown) | client's tally | rows | match |", "|---|---:|---:|:---:|"]
    for key in predicted:
        lines.append(f"| {key} | {predicted[key]} | {got[key]} | {'yes' if predicted[key] == got[key] else 'NO'} |")
    lines.append(f"| all rows | {len(expected)} answered with an arm | {sum(by_outcome.values())} | "
                 f"{'yes' if not missing and not extra else 'NO'} |")
    lines += ["", "Rows by (status, outcome): "
              + ", ".join(f"{s}/{o}: {v}" for (s, o), v in sorted(by_outcome.items())) + ".",
              f"Rows missing: {len(missing)}, rows with no answer the client saw: {len(extra)}; "
              f"spill files left: {res['spill_left'] or 'none'}; gateway exit status {res['exit_code']}, "
              f"shutdown {float(res['shutdown_s']):.1f} s.",  # type: ignore[arg-type]
              ""]
    if rss:
        lines += ["| RSS of the serving process(es) | MiB |", "|---|---:|",
                  f"| after warm-up ({rss['warm_done']} requests) | {rss['warm_mib']} |",
                  f"| end ({rss['end_done']} requests) | {rss['end_mib']} |",
                  f"| peak after warm-up | {rss['peak_after_warm_mib']} |",
                  f"| growth | {rss['growth_pct']}% |", "",
                  f"RSS (MiB) at each tenth of the requests: {', '.join(map(str, rss['tenths_mib']))}.", ""]  # type: ignore[call-overload]
        if args.kill_at is not None:
            lines += ["(With a worker replaced, the sum compares different processes; per process alive at both "
                      f"points: {rss['per_process']}.)", ""]
    summary: dict[str, object] = {
        "requests": n, "concurrency": args.concurrency, "workers": args.workers, "wall_s": round(wall, 1),
        "rps": round(n / wall, 1), "status_5xx": five_xx, "unexpected_status": len(wrong),
        "failed": len(failed), "arms": {str(k): v for k, v in arms.items()},
        "rows": sum(by_outcome.values()), "rows_expected": len(expected), "rows_missing": len(missing),
        "rows_extra": len(extra), "rows_match": not missing and not extra and predicted == got,
        "rss_warm_mib": rss.get("warm_mib"), "rss_end_mib": rss.get("end_mib"),
        "rss_growth_pct": rss.get("growth_pct"), "rss_tenths_mib": rss.get("tenths_mib"), "rss_target_lt_10pct": None,
        "spill_files_left": len(res["spill_left"]),  # type: ignore[arg-type]
    }
    if rss and args.kill_at is None:
        summary["rss_target_lt_10pct"] = float(rss["growth_pct"]) < 10  # type: ignore[arg-type]
    elif rss:
        summary["rss_growth_pct_surviving_worker"] = rss["max_growth_pct_of_a_process"]
    if args.kill_at is not None and state.kill_t is not None:
        kill_t = state.kill_t
        failed_after = [o for o in failed if o.start > kill_t + 0.05]
        lost_age = sorted(kill_t - by_id[i].end for i in missing)
        first, alive = res["first_workers"], res["alive_workers"]
        assert isinstance(first, list) and isinstance(alive, list)
        respawn_s = None if state.replaced_t is None else state.replaced_t - kill_t
        replaced = state.killed_pid not in alive and state.replacement_pid in alive
        respawned = "never" if respawn_s is None else f"{respawn_s:.2f} s later (pid {state.replacement_pid})"
        lines += [
            "| worker kill | |", "|---|---|",
            f"| killed worker | pid {state.killed_pid} after {int(args.requests * args.kill_at)} requests |",
            f"| replacement started | {respawned} |",
            f"| workers at the end | {len(alive)} ({'the killed one replaced' if replaced else f'pids {alive}'}) |",
            f"| requests failed (in flight on the killed worker) | {len(failed)}, "
            f"of which started after the kill: {len(failed_after)} |",
            f"| rows lost (answered, never stored) | {len(missing)} |",
            "| ... read by the client this long before the kill (negative: just after) | "
            + (f"{lost_age[0] * 1000:.0f} to {lost_age[-1] * 1000:.0f} ms" if lost_age else "-") + " |",
            "",
        ]
        summary.update({
            "killed_pid": state.killed_pid, "replacement_pid": state.replacement_pid,
            "respawn_s": None if respawn_s is None else round(respawn_s, 2),
            "workers_at_end": len(alive), "failed_started_after_kill": len(failed_after),
            "rows_lost": len(missing),
            "rows_lost_answered_ms_before_kill": [round(lost_age[0] * 1000), round(lost_age[-1] * 1000)]
            if lost_age else None,
        })
    if failed:
        kinds = collections.Counter(f"{o.kind}: {str(o.error).split(':')[0]}" for o in failed)
        lines += ["Failures: " + "; ".join(f"{k} x{v}" for k, v in kinds.most_common()) + ".", ""]
    if wrong:
        lines += ["Unexpected status: " + "; ".join(f"{o.kind} {o.status}" for o in wrong[:5]), ""]
    return "\n".join(lines), summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=50_000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--kill-at", type=float, default=None,
                        help="SIGKILL one worker when this share of the requests is done (needs --workers ≥ 2)")
    parser.add_argument("--name", default=None, help="results file name (default: soak, or soak_kill with --kill-at)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.kill_at is not None and (args.workers < 2 or not 0 < args.kill_at < 1):
        parser.error("--kill-at needs --workers 2 or more and a share between 0 and 1")
    res = run(args)
    table, summary = analyse(args, res)
    print(table)
    name = args.name or ("soak_kill" if args.kill_at is not None else "soak")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{name}.md").write_text(table)
    line = json.dumps({"benchmark": "soak", "name": name, **summary})
    (args.out / f"{name}.json").write_text(line + "\n")
    print(line)


if __name__ == "__main__":
    main()
