"""Insert-or-ignore (by ``id``) of trace-store rows, one statement per table and batch.

Postgres gets SQLAlchemy Core's ``INSERT ... ON CONFLICT DO NOTHING``. SQLite gets the same statement as plain
SQL, with the rows handed to the driver's ``executemany`` as tuples: SQLAlchemy's per-row parameter processing
cost more than SQLite's own insert (about 36 against 24 µs a row), and the store writes one row per request
on the serving process's event loop. The values are what SQLAlchemy's column types would bind: JSON columns
as JSON text (``orjson``, which SQLAlchemy's ``json.loads`` reads back the same; None as SQL NULL), booleans as
integers (the driver's own conversion), a missing key as NULL.
"""

from __future__ import annotations

from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

#: Per table name: the SQLite statement, its column names, and the positions of those that hold JSON.
_SQLITE: dict[str, tuple[str, tuple[str, ...], tuple[int, ...]]] = {}


def insert_ignore(dialect: str, table: sa.Table) -> Any:
    """SQLAlchemy Core's insert-or-ignore by ``id`` for ``dialect`` (``postgresql`` or ``sqlite``)."""
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table).on_conflict_do_nothing(index_elements=["id"])
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert(table).on_conflict_do_nothing(index_elements=["id"])


def sqlite_statement(table: sa.Table) -> tuple[str, tuple[str, ...], tuple[int, ...]]:
    """The plain-SQL insert-or-ignore of ``table`` for SQLite, its columns in order, and the positions of its
    JSON columns."""
    known = _SQLITE.get(table.name)
    if known is None:
        columns = tuple(c.name for c in table.columns)
        names = ", ".join(f'"{name}"' for name in columns)
        marks = ", ".join("?" for _ in columns)
        sql = f'INSERT INTO "{table.name}" ({names}) VALUES ({marks}) ON CONFLICT ("id") DO NOTHING'
        known = _SQLITE[table.name] = (
            sql,
            columns,
            tuple(i for i, c in enumerate(table.columns) if isinstance(c.type, sa.JSON)),
        )
    return known


def sqlite_params(row: dict[str, Any], columns: tuple[str, ...], json_columns: tuple[int, ...]) -> tuple[Any, ...]:
    """One row as the tuple ``sqlite_statement``'s SQL takes."""
    values = list(map(row.get, columns))
    for i in json_columns:
        value = values[i]
        if value is not None:
            values[i] = orjson.dumps(value).decode()
    return tuple(values)


async def insert_rows(conn: AsyncConnection, table: sa.Table, rows: list[dict[str, Any]]) -> None:
    """Insert ``rows`` into ``table``, ignoring those whose ``id`` is there already."""
    dialect = conn.dialect.name
    if dialect != "sqlite":
        await conn.execute(insert_ignore(dialect, table), rows)
        return
    sql, columns, json_columns = sqlite_statement(table)
    await conn.exec_driver_sql(sql, [sqlite_params(row, columns, json_columns) for row in rows])
