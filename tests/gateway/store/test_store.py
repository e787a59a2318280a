"""gateway/store: the trace store on a real SQLite file — batching, close, schema upgrades, bodies off,
spilling while the database is unavailable and replaying afterwards (nothing lost, nothing twice)."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlalchemy as sa

from gateway import metrics
from gateway.config import StoreSettings
from gateway.context import Capture, RequestContext
from gateway.pipeline.trace import Trace
from gateway.store import schema
from gateway.store.records import hash_key, shadow_row
from gateway.store.store import Store, StoreUnavailable, async_url, default_spill_path

CHAT_BODY = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "hello there"}]})
ANSWER = orjson.dumps({
    "id": "c1", "object": "chat.completion", "model": "m",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi, friend"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10},
})


def settings(path: Path, **kw: Any) -> StoreSettings:
    return StoreSettings(url=f"sqlite:///{path}", **kw)


def ctx_for(store: Store, rid: str, *, arm: str = "control", bodies: bool | None = None, stream: bool = False,
            response: bytes | None = ANSWER, chunks: list[bytes] | None = None, trace: Trace | None = None,
            user: str | None = "alice", **capture: Any) -> RequestContext:
    ctx = RequestContext(request_id=rid, started=time.perf_counter(), model="m", arm=arm, stream=stream)
    ctx.first_byte_s = 0.012
    bodies = store.log_bodies if bodies is None else bodies
    ctx.capture = Capture(store, "exp", "chat", bodies, user_source="header" if user else "random",
                          user_key=user, bucket=42 if user else None,
                          request_body=capture.pop("request_body", CHAT_BODY if bodies else None),
                          response_body=response, trace=trace, **capture)
    for piece in chunks or ():
        ctx.capture.add_chunk(piece)
    return ctx


def submit(store: Store, *rids: str, **kw: Any) -> None:
    for rid in rids:
        store.submit(ctx_for(store, rid, **kw), 200, 0.05, 0.0004)


def rows(path: Path, table: str = "requests") -> list[dict[str, Any]]:
    with sqlite3.connect(path) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute(f"SELECT * FROM {table} ORDER BY time, id")]


def count(path: Path, table: str = "requests") -> int:
    try:
        with sqlite3.connect(path, timeout=5) as conn:
            return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
    except sqlite3.OperationalError:
        return 0


async def eventually(predicate: Callable[[], bool], within: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within:g}s waiting for {what}")
        await asyncio.sleep(0.02)


def files(directory: Path, pattern: str) -> list[Path]:
    return sorted(directory.glob(pattern))


def files_bytes(directory: Path, pattern: str) -> bytes:
    return b"".join(p.read_bytes() for p in files(directory, pattern))


def spilled_lines(directory: Path) -> int:
    return sum(len(p.read_bytes().splitlines()) for p in directory.glob("*.spill.*"))


def metric(outcome: str) -> float:
    return metrics.STORE_RECORDS.labels(outcome)._value.get()  # type: ignore[no-any-return]


@pytest.fixture
async def opened() -> AsyncIterator[Callable[..., Any]]:
    stores: list[Store] = []

    async def open_store(s: StoreSettings) -> Store:
        store = Store(s)
        await store.start()
        stores.append(store)
        return store

    yield open_store
    for store in stores:
        await store.close()


# ---------------------------------------------------------------------------------------------- basics


def test_urls_get_async_drivers(tmp_path: Path) -> None:
    assert async_url("sqlite:///a.db").drivername == "sqlite+aiosqlite"
    assert async_url("postgresql://u:p@h/db").drivername == "postgresql+asyncpg"
    assert async_url("postgres://u:p@h/db").drivername == "postgresql+asyncpg"
    assert async_url("postgresql+asyncpg://u@h/db").drivername == "postgresql+asyncpg"
    assert default_spill_path(f"sqlite:///{tmp_path}/x.db") == tmp_path / "x.db.spill"
    assert default_spill_path("postgresql://h/db") == Path("aligngate.spill")


async def test_a_request_becomes_one_row_with_its_metadata_and_texts(tmp_path: Path, opened: Any) -> None:
    db = tmp_path / "t.db"
    store = await opened(settings(db))
    trace = Trace(request_id="r1", arm="rewrite", rewritten_prompt="Say hello politely")
    trace.helper_ms.rewriter = 12.5
    trace.rewriter_skipped = None
    store.submit(ctx_for(store, "r1", arm="rewrite", trace=trace), 200, 0.25, 0.0005)
    await store.flush()
    (row,) = rows(db)
    assert row["id"] == "r1" and row["experiment"] == "exp" and row["arm"] == "rewrite"
    assert row["model"] == "m" and row["endpoint"] == "chat" and row["status"] == 200 and row["stream"] == 0
    assert row["user_source"] == "header" and row["bucket"] == 42
    assert row["user_key_hash"] == hash_key("alice") and "alice" not in str(row)
    assert orjson.loads(row["messages"]) == [{"role": "user", "content": "hello there"}]
    assert row["rewritten_prompt"] == "Say hello politely"
    assert row["raw_answer"] == row["final_answer"] == "hi, friend"
    assert (row["prompt_tokens"], row["completion_tokens"]) == (7, 3)
    assert row["latency_ms"] == 250.0 and row["overhead_ms"] == 0.5 and row["ttft_ms"] == 12.0
    assert row["rewriter_ms"] == 12.5 and row["aligner_ms"] is None
    assert abs(row["time"] - (time.time() - 0.25)) < 5


async def test_a_streamed_answer_is_assembled_from_the_relayed_events(tmp_path: Path, opened: Any) -> None:
    db = tmp_path / "t.db"
    store = await opened(settings(db))

    def ev(obj: dict[str, Any]) -> bytes:
        return b"data: " + orjson.dumps(obj) + b"\n\n"

    pieces = [ev({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}),
              ev({"choices": [{"index": 0, "delta": {"content": "Hel"}}]}) +
              ev({"choices": [{"index": 1, "delta": {"content": "other choice"}}]}),
              ev({"choices": [{"index": 0, "delta": {"content": "lo ✓"}}]}),
              ev({"choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 2}}) + b"data: [DONE]\n\n"]
    store.submit(ctx_for(store, "s1", stream=True, response=None, chunks=pieces), 200, 0.1, 0.0001)
    store.submit(ctx_for(store, "s2", stream=True, response=None, chunks=pieces, bodies=False), 200, 0.1, 0.0001)
    await store.flush()
    by_id = {r["id"]: r for r in rows(db)}
    assert by_id["s1"]["final_answer"] == by_id["s1"]["raw_answer"] == "Hello ✓"
    assert (by_id["s1"]["prompt_tokens"], by_id["s1"]["completion_tokens"]) == (4, 2)
    assert by_id["s2"]["final_answer"] is None  # bodies off: only the last pieces were kept, for usage
    assert (by_id["s2"]["prompt_tokens"], by_id["s2"]["completion_tokens"]) == (4, 2)


async def test_log_bodies_false_stores_metadata_only(tmp_path: Path, opened: Any) -> None:
    db = tmp_path / "t.db"
    store = await opened(settings(db, log_bodies=False))
    trace = Trace(request_id="q", arm="rewrite+align", rewritten_prompt="SECRET rewrite",
                  original_content="SECRET raw", aligner_skipped="failed:timeout")
    store.submit(ctx_for(store, "q", arm="rewrite+align", trace=trace, raw_answer="SECRET raw",
                         final_answer="SECRET final", request_body=CHAT_BODY), 200, 0.1, 0.001)
    submit(store, "q2")
    await store.flush()
    for row in rows(db):
        assert row["messages"] is None and row["rewritten_prompt"] is None
        assert row["raw_answer"] is None and row["final_answer"] is None
        assert row["user_key_hash"] == hash_key("alice")
    raw = files_bytes(tmp_path, "t.db*")
    assert b"SECRET" not in raw and b"hello there" not in raw and b"hi, friend" not in raw
    assert rows(db)[0]["aligner_skipped"] == "failed:timeout"  # metadata stays
    assert rows(db)[1]["prompt_tokens"] == 7


# ---------------------------------------------------------------------------------------------- batching


async def test_rows_are_written_in_batches(tmp_path: Path, opened: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "t.db"
    store = await opened(settings(db, batch_size=50, flush_interval_s=30))
    sizes: list[int] = []
    real_insert = store._insert

    async def counting(records: list[tuple[str, dict[str, Any]]]) -> None:
        sizes.append(len(records))
        await real_insert(records)

    monkeypatch.setattr(store, "_insert", counting)
    submit(store, *(f"a{i}" for i in range(30)))
    await asyncio.sleep(0.2)
    assert count(db) == 0 and sizes == []  # waiting for the batch to fill (or the 30 s interval)
    submit(store, *(f"b{i}" for i in range(30)))  # the batch is full: written at once
    await eventually(lambda: count(db) == 50, within=2, what="a full batch")
    submit(store, *(f"c{i}" for i in range(60)))
    await eventually(lambda: count(db) == 100, within=2, what="the next full batch")
    await asyncio.sleep(0.2)
    assert count(db) == 100 and sizes == [50, 50]  # the last 20 wait
    await store.flush()
    assert count(db) == 120 and sizes == [50, 50, 20]


async def test_a_partial_batch_goes_out_after_the_flush_interval(tmp_path: Path, opened: Any) -> None:
    db = tmp_path / "t.db"
    store = await opened(settings(db, flush_interval_s=0.05))
    submit(store, "a", "b", "c")
    await eventually(lambda: count(db) == 3, within=2, what="the partial batch")


async def test_close_writes_everything_still_queued(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    store = Store(settings(db, batch_size=10_000, flush_interval_s=60))
    await store.start()
    submit(store, *(f"r{i}" for i in range(500)))
    assert count(db) == 0
    await store.close()
    assert count(db) == 500
    store.submit(ctx_for(store, "late"), 200, 0.1, 0.0)  # after close: spilled, replayed by the next start
    assert spilled_lines(tmp_path) == 1
    again = Store(settings(db))
    await again.start()
    await eventually(lambda: count(db) == 501, what="replay of the late record")
    await again.close()


async def test_submit_never_raises_and_returns_at_once(tmp_path: Path, opened: Any) -> None:
    store = await opened(settings(tmp_path / "t.db"))
    broken = RequestContext(request_id="x", started=0.0)  # no capture: the writer cannot build a row
    store.submit(broken, 200, 0.1, 0.0)
    t = time.perf_counter()
    submit(store, *(f"r{i}" for i in range(1000)))
    assert (time.perf_counter() - t) / 1000 < 200e-6
    await store.flush()
    assert count(tmp_path / "t.db") == 1000


# ---------------------------------------------------------------------------------------------- schema


def _indexes(db: Path) -> set[str]:
    with sqlite3.connect(db) as conn:
        return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")
                if not r[0].startswith("sqlite_")}


def _versions(db: Path) -> list[int]:
    with sqlite3.connect(db) as conn:
        return [r[0] for r in conn.execute("SELECT version FROM schema_version ORDER BY version")]


async def test_a_fresh_database_gets_the_latest_schema_in_wal_mode(tmp_path: Path, opened: Any) -> None:
    db = tmp_path / "sub" / "dir" / "t.db"  # missing directories are created
    await opened(settings(db))
    assert _versions(db) == [schema.latest_version()]
    assert {i.name for i in schema.INDEXES + schema.PREFERENCE_INDEXES} <= _indexes(db)
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        cols = [r[1] for r in conn.execute("PRAGMA table_info(requests)")]
        shadow_cols = [r[1] for r in conn.execute("PRAGMA table_info(shadow_runs)")]
        preference_cols = [r[1] for r in conn.execute("PRAGMA table_info(preferences)")]
    assert cols == list(schema.REQUEST_COLUMNS)
    assert shadow_cols == list(schema.SHADOW_COLUMNS)
    assert preference_cols == list(schema.PREFERENCE_COLUMNS)


V1_DDL = """
CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied FLOAT NOT NULL);
INSERT INTO schema_version VALUES (1, 0);
CREATE TABLE requests (
    id VARCHAR(128) PRIMARY KEY, time FLOAT NOT NULL, experiment VARCHAR NOT NULL, arm VARCHAR NOT NULL,
    arm_forced BOOLEAN NOT NULL, user_source VARCHAR NOT NULL, user_key_hash VARCHAR(64), bucket INTEGER,
    model VARCHAR NOT NULL, endpoint VARCHAR NOT NULL, stream BOOLEAN NOT NULL, status INTEGER NOT NULL,
    outcome VARCHAR, messages JSON, rewritten_prompt TEXT, raw_answer TEXT, final_answer TEXT,
    latency_ms FLOAT NOT NULL, ttft_ms FLOAT, overhead_ms FLOAT NOT NULL, rewriter_ms FLOAT, aligner_ms FLOAT,
    prompt_tokens INTEGER, completion_tokens INTEGER, rewriter_skipped VARCHAR, aligner_skipped VARCHAR);
CREATE TABLE feedback (id VARCHAR(64) PRIMARY KEY, request_id VARCHAR(128) NOT NULL, time FLOAT NOT NULL,
    rating SMALLINT NOT NULL, comment TEXT, correction TEXT);
INSERT INTO requests (id, time, experiment, arm, arm_forced, user_source, model, endpoint, stream, status,
    latency_ms, overhead_ms) VALUES ('old', 1.0, 'exp', 'align', 0, 'random', 'm', 'chat', 0, 200, 10, 1);
"""


async def test_an_older_database_is_upgraded_in_place(tmp_path: Path, opened: Any) -> None:
    db = tmp_path / "v1.db"
    with sqlite3.connect(db) as conn:
        conn.executescript(V1_DDL)
    assert _indexes(db) == set()
    store = await opened(settings(db))
    assert _versions(db) == [1, 2, 3, 4, 5]
    assert {i.name for i in schema.INDEXES + schema.PREFERENCE_INDEXES} <= _indexes(db)
    assert [r["id"] for r in rows(db)] == ["old"]  # kept
    assert rows(db, "shadow_runs") == []  # v3: the shadow_runs table
    assert rows(db, "preferences") == []  # v4: the preferences table
    with sqlite3.connect(db) as conn:  # v5: the reward gate's columns, added to the tables as they were
        assert [r[1] for r in conn.execute("PRAGMA table_info(requests)")] == list(schema.REQUEST_COLUMNS)
        assert [r[1] for r in conn.execute("PRAGMA table_info(shadow_runs)")] == list(schema.SHADOW_COLUMNS)
    assert rows(db)[0]["gate_decision"] is None
    submit(store, "new")
    await store.flush()
    assert {r["id"] for r in rows(db)} == {"old", "new"}
    await store.close()
    again = Store(settings(db))  # idempotent: nothing left to do
    await again.start()
    await again.close()
    assert _versions(db) == [1, 2, 3, 4, 5]


async def test_a_new_migration_runs_once(tmp_path: Path, opened: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "t.db"
    store = await opened(settings(db))
    submit(store, "before")
    await store.close()
    runs: list[int] = []
    latest = schema.latest_version()
    following = latest + 1

    def add_note(conn: sa.Connection) -> None:
        runs.append(following)
        conn.execute(sa.text("ALTER TABLE requests ADD COLUMN note TEXT"))

    monkeypatch.setattr(schema, "MIGRATIONS",
                        [*schema.MIGRATIONS, schema.Migration(following, "a note column", add_note)])
    for _ in range(2):
        s = Store(settings(db))
        await s.start()
        await s.close()
    assert runs == [following]
    assert _versions(db) == [latest, following]
    with sqlite3.connect(db) as conn:
        assert "note" in [r[1] for r in conn.execute("PRAGMA table_info(requests)")]
    assert [r["id"] for r in rows(db)] == ["before"]


async def test_a_v2_database_gets_the_shadow_runs_table(tmp_path: Path, opened: Any) -> None:
    db = tmp_path / "v2.db"
    with sqlite3.connect(db) as conn:
        conn.executescript(V1_DDL.replace("INSERT INTO schema_version VALUES (1, 0);",
                                          "INSERT INTO schema_version VALUES (1, 0); "
                                          "INSERT INTO schema_version VALUES (2, 0);"))
    store = await opened(settings(db))
    assert _versions(db) == [1, 2, 3, 4, 5]
    store.submit_shadow(shadow_row("old", "exp", "align", time.time(), bodies=True, corrected="better"))
    await store.flush()
    assert [(r["id"], r["corrected"]) for r in rows(db, "shadow_runs")] == [("old", "better")]


V3_DDL = V1_DDL.replace(
    "INSERT INTO schema_version VALUES (1, 0);",
    "INSERT INTO schema_version VALUES (1, 0); INSERT INTO schema_version VALUES (2, 0); "
    "INSERT INTO schema_version VALUES (3, 0); "
    "CREATE TABLE shadow_runs (id VARCHAR(128) PRIMARY KEY, time FLOAT NOT NULL, experiment VARCHAR NOT NULL, "
    "arm VARCHAR NOT NULL, skipped VARCHAR, rewritten_prompt TEXT, corrected TEXT, rewriter_ms FLOAT, "
    "aligner_ms FLOAT, rewriter_skipped VARCHAR, aligner_skipped VARCHAR);",
)


def preference(pid: str, a: str = "old", b: str = "new", preferred: str = "a", **kw: Any) -> dict[str, Any]:
    return {"id": pid, "time": time.time(), "request_a": a, "request_b": b, "arm_a": "align", "arm_b": "control",
            "preferred": preferred, "left": kw.pop("left", "b"), "comment": kw.pop("comment", None), **kw}


async def test_a_v3_database_gets_the_preferences_table(tmp_path: Path, opened: Any) -> None:
    db = tmp_path / "v3.db"
    with sqlite3.connect(db) as conn:
        conn.executescript(V3_DDL)
    store = await opened(settings(db))
    assert _versions(db) == [1, 2, 3, 4, 5]
    assert {i.name for i in schema.PREFERENCE_INDEXES} <= _indexes(db)
    submit(store, "new")
    store.submit_preference(preference("p1", comment="clearer"))
    await store.flush()
    got = rows(db, "preferences")
    assert [(r["id"], r["request_a"], r["request_b"], r["arm_a"], r["arm_b"], r["preferred"], r["left"],
             r["comment"]) for r in got] == [("p1", "old", "new", "align", "control", "a", "b", "clearer")]
    assert [r["id"] for r in rows(db)] == ["old", "new"]
    await store.close()
    again = Store(settings(db))  # idempotent
    await again.start()
    await again.close()
    assert _versions(db) == [1, 2, 3, 4, 5]


async def test_a_newer_database_is_left_alone(tmp_path: Path, opened: Any) -> None:
    db = tmp_path / "t.db"
    await (await opened(settings(db))).close()
    with sqlite3.connect(db) as conn:
        conn.execute("INSERT INTO schema_version VALUES (99, 0)")
    store = await opened(settings(db))
    submit(store, "r")
    await store.flush()
    assert count(db) == 1 and _versions(db)[-1] == 99


# ---------------------------------------------------------------------------------------------- outages


async def test_an_unreachable_database_spills_then_replays_everything_once(tmp_path: Path, opened: Any) -> None:
    """The database's directory cannot exist (a regular file is in the way): every write fails. Records go to
    the spill file; once the directory can be made, the spill is replayed and nothing is lost or doubled."""
    blocker = tmp_path / "data"
    blocker.write_text("not a directory")
    db = blocker / "t.db"
    spill = tmp_path / "spill" / "t.spill"
    spilled_before = metric("spilled")
    store = await opened(StoreSettings(url=f"sqlite:///{db}", spill_path=str(spill), retry_s=0.2,
                                       flush_interval_s=0.02, batch_size=40))
    ids = [f"r{i}" for i in range(300)]
    submit(store, *ids)
    await store.flush()
    assert spilled_lines(spill.parent) == 300
    assert metric("spilled") - spilled_before == 300
    with pytest.raises(StoreUnavailable):
        await store.find_request("r1")
    assert store.recent_arm("r1") == "control"  # feedback can still find it
    blocker.unlink()  # the outage ends
    more = [f"m{i}" for i in range(50)]
    submit(store, *more)
    await eventually(lambda: count(db) == 350, what="replay")
    await eventually(lambda: not files(spill.parent, "t.spill.*"), what="spill files removed")
    assert sorted(r["id"] for r in rows(db)) == sorted(ids + more)
    assert await store.find_request("r1") == "control"


async def test_shadow_runs_are_written_spilled_and_replayed_once(tmp_path: Path, opened: Any) -> None:
    """Shadow rows go through the same queue, spill file and replay as request rows; by id, once."""
    blocker = tmp_path / "data"
    blocker.write_text("not a directory")
    db = blocker / "t.db"
    store = await opened(StoreSettings(url=f"sqlite:///{db}", spill_path=str(tmp_path / "t.spill"), retry_s=0.2,
                                       flush_interval_s=0.02))
    submit(store, "r1")
    for _ in range(2):  # the same run recorded twice is one row
        store.submit_shadow(shadow_row("r1", "exp", "rewrite+align", time.time(), bodies=True,
                                       rewritten_prompt="better prompt", corrected="better answer",
                                       rewriter_ms=1.5, aligner_ms=2.5))
    store.submit_shadow(shadow_row("r2", "exp", "rewrite+align", time.time(), bodies=False, skipped="saturated",
                                   corrected="not stored"))
    await store.flush()
    assert spilled_lines(tmp_path) == 4
    blocker.unlink()  # the outage ends
    submit(store, "r2")
    await eventually(lambda: count(db, "shadow_runs") == 2 and count(db) == 2, what="replay")
    await eventually(lambda: spilled_lines(tmp_path) == 0, what="spill files removed")
    by_id = {r["id"]: r for r in rows(db, "shadow_runs")}
    assert (by_id["r1"]["rewritten_prompt"], by_id["r1"]["corrected"], by_id["r1"]["aligner_ms"]) == (
        "better prompt", "better answer", 2.5)
    assert (by_id["r2"]["skipped"], by_id["r2"]["corrected"]) == ("saturated", None)  # bodies off: no text


async def test_preferences_are_written_spilled_and_replayed_once(tmp_path: Path, opened: Any) -> None:
    """Preference rows go through the same queue, spill file and replay as feedback; by id, once."""
    blocker = tmp_path / "data"
    blocker.write_text("not a directory")
    db = blocker / "t.db"
    store = await opened(StoreSettings(url=f"sqlite:///{db}", spill_path=str(tmp_path / "t.spill"), retry_s=0.2,
                                       flush_interval_s=0.02))
    row = preference("p1", a="r1", b="r2", preferred="tie", left=None)
    store.submit_preference(row)
    store.submit_preference(row)  # the same preference twice (a replay) is one row
    store.submit_preference(preference("p2", a="r2", b="r1", preferred="b"))
    await store.flush()
    assert spilled_lines(tmp_path) == 3
    blocker.unlink()  # the outage ends
    submit(store, "r1")
    await eventually(lambda: count(db, "preferences") == 2 and count(db) == 1, what="replay")
    await eventually(lambda: spilled_lines(tmp_path) == 0, what="spill files removed")
    by_id = {r["id"]: r for r in rows(db, "preferences")}
    assert (by_id["p1"]["preferred"], by_id["p1"]["left"]) == ("tie", None)
    assert (by_id["p2"]["request_a"], by_id["p2"]["preferred"]) == ("r2", "b")


async def test_a_failed_write_that_did_commit_is_not_doubled(tmp_path: Path, opened: Any,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A write that reached the database but reported failure (a connection lost at commit) is spilled and
    replayed: insert-or-ignore by id keeps one row per request."""
    db = tmp_path / "t.db"
    store = await opened(settings(db, retry_s=0.1, flush_interval_s=0.02))
    real_insert = store._insert
    failures = [1]

    async def commits_then_fails(records: list[tuple[str, dict[str, Any]]]) -> None:
        await real_insert(records)
        if failures:
            failures.pop()
            raise OSError("connection reset at commit")

    monkeypatch.setattr(store, "_insert", commits_then_fails)
    submit(store, *(f"r{i}" for i in range(100)))
    await store.flush()
    assert spilled_lines(tmp_path) == 100
    submit(store, "after")
    await eventually(lambda: spilled_lines(tmp_path) == 0 and count(db) == 101, what="replay")
    assert len({r["id"] for r in rows(db)}) == 101


async def test_a_full_queue_spills_instead_of_blocking(tmp_path: Path, opened: Any,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "t.db"
    store = await opened(settings(db, queue_size=5, batch_size=5, flush_interval_s=0.01, retry_s=0.1))
    gate = asyncio.Event()
    real_insert = store._insert

    async def stalled(records: list[tuple[str, dict[str, Any]]]) -> None:
        await gate.wait()
        await real_insert(records)

    monkeypatch.setattr(store, "_insert", stalled)
    appends: list[int] = []
    real_append = store.spill.append

    def counted(records: list[tuple[str, dict[str, Any]]]) -> None:
        appends.append(len(records))
        real_append(records)

    monkeypatch.setattr(store.spill, "append", counted)
    submit(store, "first")
    await asyncio.sleep(0.05)  # the writer is now stuck on the first batch
    t = time.perf_counter()
    submit(store, *(f"r{i}" for i in range(40)))
    assert time.perf_counter() - t < 0.5
    assert spilled_lines(tmp_path) == 35  # 5 fit in the queue
    assert appends == [5] * 7  # one write and fsync per batch_size records, not one per record
    submit(store, "late-1", "late-2")  # fewer than a batch: spilled flush_interval_s after the first
    assert spilled_lines(tmp_path) == 35
    await eventually(lambda: spilled_lines(tmp_path) == 37, what="the partial overflow spilled by its timer")
    assert appends[-1] == 2
    gate.set()
    await eventually(lambda: count(db) == 43, what="queue and spill written")
    await eventually(lambda: spilled_lines(tmp_path) == 0, what="spill replayed")


async def test_an_overflow_waiting_for_its_batch_is_spilled_at_close(tmp_path: Path, opened: Any,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "t.db"
    store = await opened(settings(db, queue_size=2, batch_size=50, flush_interval_s=30, retry_s=0.1))
    gate = asyncio.Event()

    async def stalled(records: list[tuple[str, dict[str, Any]]]) -> None:
        await gate.wait()

    monkeypatch.setattr(store, "_insert", stalled)
    submit(store, "first")
    await asyncio.sleep(0.05)  # the writer waits (up to 30 s) for its batch to fill
    submit(store, *(f"r{i}" for i in range(5)))  # the queue is full at 2: 4 wait in the overflow (timer: 30 s)
    assert spilled_lines(tmp_path) == 0
    # the writer takes the 2 queued records and the database never answers: the close gives up on it, and what
    # it held, like the overflow, is spilled, not lost
    await store.close(timeout_s=0.2)
    assert spilled_lines(tmp_path) == 6


async def test_spill_files_of_a_dead_process_are_replayed_at_start(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    first = Store(settings(db))
    await first.start()
    submit(first, "seed")
    await first.close()
    row = rows(db)[0]
    lines = [orjson.dumps({"table": "requests", "row": {**row, "id": f"dead-{i}", "messages": None}})
             for i in range(10)]
    lines.append(b'{"table": "requests", "row": {"id": "torn"')  # a write cut by the crash
    lines.append(orjson.dumps({"table": "feedback", "row": {"id": "f1", "request_id": "dead-1", "time": 1.0,
                                                             "rating": 1, "comment": None, "correction": None}}))
    lines.append(orjson.dumps({"table": "requests", "row": {**row, "id": "poison", "arm": None}}))
    (tmp_path / "t.db.spill.4242.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    second = Store(settings(db))
    await second.start()
    await eventually(lambda: count(db) == 11, what="replay at start")
    await second.close()
    assert count(db, "feedback") == 1
    assert not files(tmp_path, "t.db.spill.*")
    rejected = (tmp_path / "t.db.spill-rejected.jsonl").read_bytes().splitlines()
    assert len(rejected) == 1 and orjson.loads(rejected[0])["row"]["id"] == "poison"


@contextlib.contextmanager
def locked(path: Path, content: bytes) -> Iterator[None]:
    with open(path, "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        fh.write(content)
        fh.flush()
        yield


async def test_another_live_process_spill_file_is_left_to_it(tmp_path: Path, opened: Any,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.store import store as store_mod

    monkeypatch.setattr(store_mod, "_SCAN_S", 0.05)
    db = tmp_path / "t.db"
    store = await opened(settings(db, retry_s=0.05))
    submit(store, "r")
    await store.flush()
    row = {**rows(db)[0], "id": "theirs", "messages": None}
    live = tmp_path / "t.db.spill.777.jsonl"
    with locked(live, orjson.dumps({"table": "requests", "row": row}) + b"\n"):  # as a live worker holds it
        submit(store, "r2")
        await store.flush()
        await asyncio.sleep(0.3)  # several retry rounds
        assert live.exists() and count(db) == 2
    # that worker is gone (its lock with it): the file is taken and replayed
    await eventually(lambda: count(db) == 3 and not live.exists(), what="the released file replayed")
