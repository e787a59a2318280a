"""SQLite's cost of a trace-store row as the ``requests`` table grows: request ids in time order (UUID version 7,
what the gateway makes) against random ones (version 4, what it made before).

The ``requests`` table is created from the store's own schema (``gateway.store.schema``) in a fresh SQLite file
with the store's settings (WAL, ``synchronous=NORMAL``); rows like the pass-through's (bodies logged) are built
with the store's own ``sqlite_params`` and inserted in transactions of 200, as the writer does. The CPU time of the
inserts alone is reported per 100,000 rows, so the growth with the table shows: a random id lands at a random
place of the primary-key index, a time-ordered one at its end.

Prints a table, writes ``benchmarks/results/store_inserts.md`` and ends with one JSON line.

    python benchmarks/store_inserts.py [--rows 500000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sqlite3
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import sqlalchemy as sa

from gateway.middleware import new_request_id
from gateway.store import schema
from gateway.store.inserts import sqlite_params, sqlite_statement

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
BATCH = 200
WINDOW = 100_000
MESSAGES = [{"role": "user", "content": "Say hello in five words."}]
ANSWER = "Hello there, how are you doing today my friend?"


def _row(rid: str) -> dict[str, object]:
    return {
        "id": rid, "time": time.time(), "experiment": "default", "arm": "control", "arm_forced": False,
        "user_source": "random", "bucket": 17, "model": "bench-model", "endpoint": "chat", "stream": False,
        "status": 200, "outcome": "ok", "messages": MESSAGES, "raw_answer": ANSWER, "final_answer": ANSWER,
        "latency_ms": 3.2, "ttft_ms": 3.1, "overhead_ms": 0.4, "prompt_tokens": 12, "completion_tokens": 16,
    }


def measure(ids: Callable[[], str], rows: int, workdir: Path) -> list[float]:
    """CPU µs per inserted row, per ``WINDOW`` rows, into a fresh database."""
    path = workdir / f"{uuid.uuid4().hex}.db"
    engine = sa.create_engine(f"sqlite:///{path}")
    schema.metadata.create_all(engine)
    engine.dispose()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    sql, columns, json_columns = sqlite_statement(schema.requests)
    done, spent, windows = 0, 0.0, []
    while done < rows:
        batch = [sqlite_params(_row(ids()), columns, json_columns) for _ in range(BATCH)]
        t0 = time.process_time()
        conn.execute("BEGIN")
        conn.executemany(sql, batch)
        conn.execute("COMMIT")
        spent += time.process_time() - t0
        done += BATCH
        if done % WINDOW == 0:
            windows.append(spent / WINDOW * 1e6)
            spent = 0.0
    conn.close()
    return windows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=500_000, help="rows per id kind (a multiple of 100,000)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    kinds: dict[str, Callable[[], str]] = {
        "time-ordered (UUID v7)": new_request_id, "random (UUID v4)": lambda: uuid.uuid4().hex,
    }
    with tempfile.TemporaryDirectory(prefix="aligngate-inserts-") as tmp:
        results = {name: measure(ids, args.rows, Path(tmp)) for name, ids in kinds.items()}
    windows = len(next(iter(results.values())))
    header = " | ".join(f"rows {i * WINDOW // 1000}-{(i + 1) * WINDOW // 1000}k" for i in range(windows))
    lines = [
        "# SQLite insert cost of a trace-store row as the table grows",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, SQLite "
        f"{sqlite3.sqlite_version}. Command: `{' '.join(['python benchmarks/store_inserts.py', *sys.argv[1:]])}`. The "
        f"store's `requests` schema, WAL, synchronous=NORMAL, transactions of {BATCH} rows, bodies logged; CPU µs "
        "per row of the inserts alone, per 100,000 rows.",
        "",
        f"| request ids | {header} |",
        "|---|" + "---:|" * windows,
    ]
    for name, values in results.items():
        lines.append(f"| {name} | " + " | ".join(f"{v:.1f}" for v in values) + " |")
    lines.append("")
    text = "\n".join(lines)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "store_inserts.md").write_text(text)
    print(json.dumps({"benchmark": "store_inserts", "rows": args.rows,
                      **{name: [round(v, 2) for v in values] for name, values in results.items()}}))


if __name__ == "__main__":
    main()
