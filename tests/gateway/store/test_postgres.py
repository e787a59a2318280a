"""The trace store on a real PostgreSQL server (asyncpg), including a real outage: the server is stopped
while requests are recorded, and started again. Skipped when no PostgreSQL server is installed."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from gateway.config import StoreSettings
from gateway.context import Capture, RequestContext
from gateway.store import schema
from gateway.store.store import Store
from tests.fakes.postgres import LocalPostgres
from tests.system import missing

BODY = b'{"model": "m", "messages": [{"role": "user", "content": "hi"}]}'
ANSWER = b'{"choices": [{"index": 0, "message": {"content": "hello"}}], "usage": {"prompt_tokens": 2}}'


@pytest.fixture(scope="module")
def pg() -> Iterator[LocalPostgres]:
    server = LocalPostgres.find()
    if server is None:
        missing(LocalPostgres.missing)
    try:
        yield server
    finally:
        server.destroy()


def spill_files(directory: Path) -> list[Path]:
    return list(directory.glob("pg.spill.*"))


def submit(store: Store, *rids: str) -> None:
    for rid in rids:
        ctx = RequestContext(request_id=rid, started=time.perf_counter(), model="m", arm="align")
        ctx.capture = Capture(store, "exp", "chat", True, user_key="u", bucket=7, request_body=BODY,
                              response_body=ANSWER)
        store.submit(ctx, 200, 0.02, 0.0003)


async def ids(store: Store) -> list[str]:
    return sorted(r["id"] for r in await store.query(sa.select(schema.requests.c.id)))


async def settle(predicate: Any, within: float = 15.0) -> None:
    deadline = time.monotonic() + within
    while not await predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def test_postgres_store_writes_upgrades_and_survives_an_outage(pg: LocalPostgres, tmp_path: Path) -> None:
    settings = StoreSettings(url=pg.url, spill_path=str(tmp_path / "pg.spill"), retry_s=0.3, timeout_s=2,
                             flush_interval_s=0.05)
    store = Store(settings)
    await store.start()
    try:
        assert store.url.drivername == "postgresql+asyncpg"
        submit(store, *(f"a{i}" for i in range(250)))
        await store.flush()
        assert len(await ids(store)) == 250
        rows = await store.query(sa.select(schema.requests).where(schema.requests.c.id == "a1"))
        assert rows[0]["messages"] == [{"role": "user", "content": "hi"}]  # JSONB
        assert rows[0]["final_answer"] == "hello" and rows[0]["prompt_tokens"] == 2
        versions = await store.query(sa.select(schema.schema_version.c.version))
        assert [v["version"] for v in versions] == [schema.latest_version()]

        pg.stop()  # the outage
        submit(store, *(f"b{i}" for i in range(100)))
        store.submit_feedback({"id": "f1", "request_id": "b1", "time": time.time(), "rating": -1,
                               "comment": None, "correction": "better"})
        await store.flush()
        assert len(spill_files(tmp_path)) == 1
        pg.start()
        submit(store, "c0")
        await settle(lambda: _count(store, 351))
        assert await ids(store) == sorted([f"a{i}" for i in range(250)] + [f"b{i}" for i in range(100)] + ["c0"])
        store.submit_preference({"id": "p1", "request_a": "b1", "request_b": "a1", "time": time.time(),
                                 "arm_a": "align", "arm_b": "align", "preferred": "b", "left": "a",
                                 "comment": None})
        await store.flush()
        fb = await store.query(sa.select(schema.feedback))
        assert [(f["request_id"], f["rating"], f["correction"]) for f in fb] == [("b1", -1, "better")]
        prefs = await store.query(sa.select(schema.preferences))
        assert [(p["request_a"], p["request_b"], p["preferred"], p["left"]) for p in prefs] == [("b1", "a1", "b", "a")]
        assert not spill_files(tmp_path)
    finally:
        await store.close()
    again = Store(settings)  # a second gateway start: nothing to upgrade, nothing lost
    await again.start()
    try:
        assert len(await ids(again)) == 351
    finally:
        await again.close()


async def test_a_v3_postgres_database_gets_the_preferences_table(pg: LocalPostgres, tmp_path: Path) -> None:
    """A database as a gateway before preferences left it (versions 1-3, no ``preferences`` table) is upgraded in
    place to version 4, keeping its rows, and preferences are written there."""
    settings = StoreSettings(url=pg.url, spill_path=str(tmp_path / "pg.spill"), timeout_s=2, flush_interval_s=0.05)
    store = Store(settings)
    await store.start()
    try:
        engine = create_async_engine(store.url)
        async with engine.begin() as conn:  # back to version 3
            await conn.execute(sa.text("DROP TABLE IF EXISTS preferences"))
            await conn.execute(sa.delete(schema.schema_version))
            await conn.execute(schema.schema_version.insert(), [{"version": v, "applied": 0.0} for v in (1, 2, 3)])
        await engine.dispose()
    finally:
        await store.close()
    upgraded = Store(settings)
    await upgraded.start()
    try:
        versions = await upgraded.query(sa.select(schema.schema_version.c.version).order_by("version"))
        assert [v["version"] for v in versions] == [1, 2, 3, 4, 5]
        submit(upgraded, "v3-r")
        upgraded.submit_preference({"id": "p-v3", "request_a": "v3-r", "request_b": "a1", "time": time.time(),
                                    "arm_a": "align", "arm_b": "align", "preferred": "tie", "left": None,
                                    "comment": "same"})
        await upgraded.flush()
        prefs = await upgraded.query(sa.select(schema.preferences).where(schema.preferences.c.id == "p-v3"))
        assert [(p["preferred"], p["comment"]) for p in prefs] == [("tie", "same")]
        assert "v3-r" in await ids(upgraded)
    finally:
        await upgraded.close()


async def _count(store: Store, n: int) -> bool:
    try:
        return len(await ids(store)) == n
    except Exception:
        return False
