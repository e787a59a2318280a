"""The report and the export read a real PostgreSQL trace store (asyncpg) the same as SQLite. Skipped when no
PostgreSQL server is installed."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from gateway.config import StoreSettings
from gateway.report.ab import summarize
from gateway.report.export import export
from gateway.report.source import Selection, StoreError, read
from gateway.store import schema
from gateway.store.store import Store, async_url
from tests.fakes.postgres import LocalPostgres
from tests.gateway.report.seed import ab_rows, export_rows
from tests.system import missing
from train.data.loaders import load_gateway_export


@pytest.fixture(scope="module")
def pg() -> Iterator[LocalPostgres]:
    server = LocalPostgres.find()
    if server is None:
        missing(LocalPostgres.missing)
    try:
        yield server
    finally:
        server.destroy()


def test_report_and_export_on_postgres(pg: LocalPostgres, tmp_path: Path) -> None:
    async def seed() -> None:
        store = Store(StoreSettings(url=pg.url, spill_path=str(tmp_path / "pg.spill")))
        await store.start()  # the gateway's own schema upgrade
        await store.close()
        engine = create_async_engine(async_url(pg.url))
        async with engine.begin() as conn:
            for requests, feedback in (ab_rows(), export_rows()):
                await conn.execute(schema.requests.insert(), requests)
                await conn.execute(schema.feedback.insert(), feedback)
        await engine.dispose()

    asyncio.run(seed())
    report = summarize(read(pg.url, Selection(experiment="exp", include_forced=False), latest_by_default=True))
    control, align = report.arm("control"), report.arm("align")
    assert control is not None and align is not None
    # the A/B seed plus the export seed's exp requests (e1, e9, e12, e15 control; e2 e3 e4 e8 e10 align ...)
    assert control.requests == 11 + 4
    assert (align.up, align.rated) == (8 + 2, 10 + 4)  # e2 e3 up, e4 e8 down; forced e10 left out
    out = tmp_path / "prefs.jsonl"
    result = export(pg.url, "preferences", out)
    assert [r["request_id"] for r in result.rows] == ["e13", "e1", "e2", "e9", "e10", "e14"]
    assert len(load_gateway_export(out, "preferences")) == 6
    base, _ = pg.url.rsplit("/", 1)
    with pytest.raises(StoreError, match=r"postgres@127\.0\.0\.1.*no_such_db.*does not exist"):
        read(f"{base}/no_such_db", Selection())
