"""The trace store in real gateway processes over a fake upstream: every request becomes exactly one row
(5,000 at concurrency 100; two workers on one SQLite file), the queue is written at shutdown, and a database
that refuses writes (another connection holds SQLite's write lock) spills and replays with nothing lost.
A PostgreSQL variant stops and restarts a real server (skipped when none is installed)."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest

from tests.e2e.support import Fake, Gateway, Procs, backend, gateway_config, metric_sum, wait_for
from tests.fakes.postgres import LocalPostgres
from tests.system import missing

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8}


def db_ids(path: Path) -> list[str]:
    try:
        with sqlite3.connect(path, timeout=10) as conn:
            return [r[0] for r in conn.execute("SELECT id FROM requests")]
    except sqlite3.OperationalError:  # not created yet
        return []


def db_count(path: Path, table: str = "requests") -> int:
    try:
        with sqlite3.connect(path, timeout=10) as conn:
            return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
    except sqlite3.OperationalError:
        return -1


async def blast(url: str, total: int, concurrency: int, users: int = 500) -> tuple[list[str], float]:
    """``total`` chat requests, ``concurrency`` at a time; the X-Request-Id of each, and the seconds taken."""
    ids: list[str] = []
    next_i = 0
    connector = aiohttp.TCPConnector(limit=concurrency)

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal next_i
        while next_i < total:
            i = next_i
            next_i += 1
            headers = {"X-Aligngate-User": f"user-{i % users}"}
            async with session.post(f"{url}/v1/chat/completions", json=CHAT, headers=headers) as resp:
                await resp.read()
                assert resp.status == 200, await resp.text()
                ids.append(resp.headers["x-request-id"])

    t = time.perf_counter()
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    return ids, time.perf_counter() - t


@pytest.fixture(scope="module")
def fake(module_procs: Procs) -> Fake:
    return module_procs.fake("store-up")


def store_gateway(procs: Procs, fake: Fake, tmp: Path, tag: str, **store: Any) -> Gateway:
    config = gateway_config(backend("m", fake.v1))
    config["store"] = {"url": f"sqlite:///{tmp / f'{tag}.db'}", **store}
    config["experiment"] = {"name": "e2e", "arms": {"control": 1}}
    return procs.gateway(config, tag=tag)


async def test_5000_requests_at_concurrency_100_leave_exactly_5000_rows(procs: Procs, fake: Fake,
                                                                        tmp_path: Path) -> None:
    gw = store_gateway(procs, fake, tmp_path, "load")
    ids, took = await blast(gw.url, 5000, 100)
    assert len(ids) == len(set(ids)) == 5000
    t = time.perf_counter()
    await asyncio.to_thread(wait_for, lambda: db_count(gw.db_path) >= 5000, 20, 0.1, "5,000 rows")
    settle = time.perf_counter() - t
    assert sorted(db_ids(gw.db_path)) == sorted(ids)
    print(f"\n5,000 requests at concurrency 100: {took:.1f} s ({5000 / took:.0f} req/s); "
          f"all rows written {settle:.2f} s after the last answer")
    samples = gw.metrics()
    assert metric_sum(samples, "aligngate_store_records_total", outcome="written") == 5000
    assert metric_sum(samples, "aligngate_store_records_total", outcome="spilled") == 0


async def test_two_workers_share_one_sqlite_file(procs: Procs, fake: Fake, tmp_path: Path) -> None:
    config = gateway_config(backend("m", fake.v1))
    config["store"] = {"url": f"sqlite:///{tmp_path / 'w2.db'}"}
    gw = procs.gateway(config, workers=2, tag="store-w2")
    ids, _ = await blast(gw.url, 1000, 50)
    await asyncio.to_thread(wait_for, lambda: db_count(gw.db_path) >= 1000, 20, 0.1, "1,000 rows")
    assert sorted(db_ids(gw.db_path)) == sorted(ids)


def test_shutdown_writes_what_is_still_queued(procs: Procs, fake: Fake, tmp_path: Path) -> None:
    gw = store_gateway(procs, fake, tmp_path, "shutdown", batch_size=100_000, flush_interval_s=600)
    with httpx.Client(base_url=gw.v1) as client:
        ids = [client.post("/chat/completions", json=CHAT).headers["x-request-id"] for _ in range(300)]
    assert db_count(gw.db_path) == 0  # all waiting in the queue
    t = time.perf_counter()
    gw.send(signal.SIGTERM)
    assert gw.wait(30) == 0
    print(f"\nshutdown with 300 queued records: {time.perf_counter() - t:.2f} s")
    assert sorted(db_ids(gw.db_path)) == sorted(ids)


@pytest.fixture
def write_lock() -> Iterator[Any]:
    """``lock(path)`` takes SQLite's write lock from another connection until ``release()``."""
    held: list[sqlite3.Connection] = []

    class Lock:
        def take(self, path: Path) -> None:
            conn = sqlite3.connect(path, isolation_level=None)
            conn.execute("BEGIN EXCLUSIVE")
            held.append(conn)

        def release(self) -> None:
            while held:
                conn = held.pop()
                conn.execute("COMMIT")
                conn.close()

    lock = Lock()
    yield lock
    lock.release()


def test_a_database_that_refuses_writes_spills_and_replays_everything(
    procs: Procs, fake: Fake, tmp_path: Path, write_lock: Any
) -> None:
    """A real refusal: another connection holds the SQLite file's write lock (as a long migration, a backup
    or a stuck admin session would), so every write of the gateway times out. The gateway keeps answering,
    spills to ``<db>.spill.<pid>.jsonl``, and replays once the lock is gone; no row is lost or doubled."""
    gw = store_gateway(procs, fake, tmp_path, "outage", timeout_s=0.3, retry_s=0.3, flush_interval_s=0.05)
    client = httpx.Client(base_url=gw.v1, timeout=10)
    before = [client.post("/chat/completions", json=CHAT).headers["x-request-id"] for _ in range(20)]
    wait_for(lambda: db_count(gw.db_path) == 20, 10, what="the first 20 rows")

    write_lock.take(gw.db_path)
    during = []
    t = time.perf_counter()
    for _ in range(200):
        r = client.post("/chat/completions", json=CHAT)
        assert r.status_code == 200
        during.append(r.headers["x-request-id"])
    took = time.perf_counter() - t
    assert took < 10, took  # the outage costs requests nothing
    fb = client.post("/feedback", json={"request_id": during[0], "rating": 1, "comment": "during the outage"})
    assert fb.status_code == 200, fb.text
    spill_files = lambda: list(gw.db_path.parent.glob(f"{gw.db_path.name}.spill.*"))  # noqa: E731
    wait_for(lambda: metric_sum(gw.metrics(), "aligngate_store_records_total", outcome="spilled") == 201, 15,
             what="201 records spilled")
    assert spill_files()
    assert db_count(gw.db_path) == 20  # readers still work in WAL mode: nothing new got in

    write_lock.release()  # the database takes writes again
    after = [client.post("/chat/completions", json=CHAT).headers["x-request-id"] for _ in range(10)]
    wait_for(lambda: db_count(gw.db_path) == 230 and db_count(gw.db_path, "feedback") == 1, 15,
             what="replay of the spilled records")
    assert sorted(db_ids(gw.db_path)) == sorted(before + during + after)
    wait_for(lambda: not spill_files(), 5, what="spill files removed")
    samples = gw.metrics()
    # the first requests after the outage may be spilled too (the writer waits retry_s before trying again)
    spilled = metric_sum(samples, "aligngate_store_records_total", outcome="spilled")
    assert 201 <= spilled <= 211
    assert metric_sum(samples, "aligngate_store_records_total", outcome="replayed") == spilled
    assert metric_sum(samples, "aligngate_store_records_total", outcome="dropped") == 0
    assert metric_sum(samples, "aligngate_feedback_total", arm="control", rating="1") == 1
    client.close()


def test_postgres_outage_spills_and_replays(procs: Procs, fake: Fake, tmp_path: Path) -> None:
    pg = LocalPostgres.find()
    if pg is None:
        missing(LocalPostgres.missing)
    try:
        config = gateway_config(backend("m", fake.v1))
        config["store"] = {"url": pg.url, "spill_path": str(tmp_path / "pg.spill"), "retry_s": 0.3,
                           "timeout_s": 2, "flush_interval_s": 0.05}
        gw = procs.gateway(config, tag="store-pg")
        client = httpx.Client(base_url=gw.v1, timeout=10)
        ids = [client.post("/chat/completions", json=CHAT).headers["x-request-id"] for _ in range(50)]
        pg.stop()
        ids += [client.post("/chat/completions", json=CHAT).headers["x-request-id"] for _ in range(100)]
        wait_for(lambda: metric_sum(gw.metrics(), "aligngate_store_records_total", outcome="spilled") >= 100, 15,
                 what="records spilled while Postgres is down")
        pg.start()
        ids += [client.post("/chat/completions", json=CHAT).headers["x-request-id"] for _ in range(10)]

        def stored() -> list[str]:
            import asyncpg  # the postgres extra, installed by the dev set-up

            async def fetch() -> list[str]:
                conn = await asyncpg.connect(pg.url)
                try:
                    return [r["id"] for r in await conn.fetch("SELECT id FROM requests")]
                finally:
                    await conn.close()

            return asyncio.run(fetch())

        wait_for(lambda: len(stored()) == 160, 20, what="160 rows in Postgres")
        assert sorted(stored()) == sorted(ids)
        client.close()
    finally:
        pg.destroy()


async def test_postgres_restarted_under_steady_load_keeps_every_request_once(procs: Procs, fake: Fake,
                                                                             tmp_path: Path) -> None:
    """Issue 18, part 5: inference traffic never stops while Postgres is stopped and started again; afterwards
    the rows are exactly the requests served: none lost, none written twice (a second write of a row would be
    refused by its primary key and counted as rejected)."""
    pg = await asyncio.to_thread(LocalPostgres.find)
    if pg is None:
        missing(LocalPostgres.missing)
    try:
        config = gateway_config(backend("m", fake.v1))
        config["store"] = {"url": pg.url, "spill_path": str(tmp_path / "restart.spill"), "retry_s": 0.3,
                           "timeout_s": 1, "flush_interval_s": 0.05, "batch_size": 20}
        gw = await asyncio.to_thread(procs.gateway, config, tag="store-pg-restart")
        ids: list[str] = []
        running = True

        async def traffic(session: aiohttp.ClientSession) -> None:
            while running:
                async with session.post(f"{gw.url}/v1/chat/completions", json=CHAT) as resp:
                    await resp.read()
                    assert resp.status == 200, await resp.text()
                    ids.append(resp.headers["x-request-id"])
                await asyncio.sleep(0.005)

        async with aiohttp.ClientSession() as session:
            clients = [asyncio.create_task(traffic(session)) for _ in range(8)]
            await asyncio.sleep(1.5)
            before_stop = len(ids)
            await asyncio.to_thread(pg.stop)
            await asyncio.sleep(2.0)
            during = len(ids) - before_stop
            await asyncio.to_thread(pg.start)
            await asyncio.sleep(2.0)
            running = False
            await asyncio.gather(*clients)
        assert before_stop > 50 and during > 50, (before_stop, during)  # traffic went on through the outage

        async def stored() -> list[str]:
            import asyncpg  # the postgres extra, installed by the dev set-up

            conn = await asyncpg.connect(pg.url)
            try:
                return [r["id"] for r in await conn.fetch("SELECT id FROM requests")]
            finally:
                await conn.close()

        served = len(ids)
        assert len(set(ids)) == served
        await asyncio.to_thread(wait_for, lambda: len(asyncio.run(stored())) >= served, 20, 0.2,
                                f"{served} rows in Postgres")
        rows = await stored()
        assert len(rows) == served and sorted(rows) == sorted(ids)
        samples = gw.metrics()
        outcomes = {o: metric_sum(samples, "aligngate_store_records_total", outcome=o)
                    for o in ("written", "spilled", "replayed", "rejected", "dropped")}
        assert outcomes["spilled"] > 0, outcomes  # the outage was real
        assert outcomes["rejected"] == outcomes["dropped"] == 0, outcomes
        assert outcomes["written"] + outcomes["replayed"] == served, outcomes
    finally:
        await asyncio.to_thread(pg.destroy)
