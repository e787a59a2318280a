"""gateway/store/inserts.py: the SQLite fast insert stores exactly what SQLAlchemy Core's insert stores."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from gateway.store import schema
from gateway.store.inserts import insert_ignore, insert_rows, sqlite_params, sqlite_statement


def _request(rid: str, **overrides: Any) -> dict[str, Any]:
    row: dict[str, Any] = {c.name: None for c in schema.requests.columns}
    row.update(
        {
            "id": rid,
            "time": 1.5,
            "experiment": "e",
            "arm": "control",
            "arm_forced": True,
            "user_source": "header",
            "model": "m",
            "endpoint": "chat",
            "stream": False,
            "status": 200,
            "latency_ms": 2.25,
            "overhead_ms": 0.5,
            "messages": [{"role": "user", "content": 'h\u00e9 \U0001f30d "q"'}],
            "raw_answer": "a",
            "final_answer": "a",
            "prompt_tokens": 3,
            "bucket": 42,
        }
    )
    row.update(overrides)
    return row


async def _rows(url: str, fast: bool, batches: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(schema.metadata.create_all)
        for batch in batches:
            async with engine.begin() as conn:
                if fast:
                    await insert_rows(conn, schema.requests, batch)
                else:
                    await conn.execute(insert_ignore("sqlite", schema.requests), batch)
        async with engine.connect() as conn:
            result = await conn.execute(sa.select(schema.requests).order_by(schema.requests.c.id))
            return [dict(r._mapping) for r in result]
    finally:
        await engine.dispose()


async def test_sqlite_fast_insert_matches_sqlalchemy_core(tmp_path: Path) -> None:
    batches = [
        [_request("a"), _request("b", messages=None, arm_forced=False, stream=True, bucket=None)],
        [_request("a", arm="align"), _request("c", messages=[{"role": "user", "content": [{"type": "text"}]}])],
    ]
    core = await _rows(f"sqlite+aiosqlite:///{tmp_path / 'core.db'}", False, batches)
    fast = await _rows(f"sqlite+aiosqlite:///{tmp_path / 'fast.db'}", True, batches)
    assert fast == core
    assert [r["id"] for r in fast] == ["a", "b", "c"]
    assert fast[0]["arm"] == "control"  # the duplicate id was ignored
    assert fast[0]["arm_forced"] is True and fast[1]["messages"] is None
    assert fast[0]["messages"] == [{"role": "user", "content": 'h\u00e9 \U0001f30d "q"'}]


def test_sqlite_params_missing_keys_are_null() -> None:
    sql, columns, json_columns = sqlite_statement(schema.feedback)
    assert sql.startswith('INSERT INTO "feedback" ("id", "request_id", "time"') and "ON CONFLICT" in sql
    assert json_columns == ()
    assert sqlite_params({"id": "f", "rating": 1}, columns, json_columns) == ("f", None, None, 1, None, None)
    assert [schema.requests.c[i].name for i in sqlite_statement(schema.requests)[2]] == ["messages"]
