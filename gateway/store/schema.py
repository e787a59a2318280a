"""The trace store's tables, and the versioned upgrades that bring any older database to them.

Tables (SQLAlchemy Core, the same on SQLite and Postgres):

* ``requests`` — one row per inference request that got an arm; ``id`` is the request id (``X-Request-Id``).
* ``feedback`` — every rating, as history (a later rating of the same request does not replace an earlier
  one; the latest by ``time`` counts). ``request_id`` is indexed but not a foreign key: rows of different
  gateway processes and spill replays arrive in any order.
* ``shadow_runs`` — what the helpers made in shadow mode, one row per shadow-sampled request, keyed by its
  request id (join ``requests`` on ``id``). A table of its own rather than columns of ``requests``: a shadow
  run ends after its request's row was queued (in any order with it, through spills and replays), and an
  insert-or-ignore by id keeps every write, replay included, independent and idempotent.
* ``preferences`` — pairwise preferences (``POST /v1/preferences``): a person compared the answers of two requests
  (``request_a``, ``request_b``, with their arms as they were when compared) and preferred one, or neither
  (``tie``); ``left`` says which one was shown on the left (position bias). Like ``feedback``, the request ids are
  indexed but not foreign keys, and every judgement is a row of its own.
* ``schema_version`` — one row per applied version.

Version 5 adds nullable columns (the aligner's reward gate) to ``requests`` and ``shadow_runs`` with ``ALTER TABLE
... ADD COLUMN``, each only when missing; rows written by an older gateway leave them NULL.

``upgrade`` is idempotent and safe to run from several processes at once: a fresh database gets the whole
current schema at once; an older one runs the missing steps of :data:`MIGRATIONS` in order, each step
idempotent itself (``checkfirst``), all in one transaction (Postgres: under an advisory lock).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    Connection,
    Float,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
    func,
    inspect,
    select,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncConnection

metadata = MetaData()

requests = Table(
    "requests", metadata,
    Column("id", String(128), primary_key=True),
    #: Arrival time, seconds since the epoch (UTC).
    Column("time", Float, nullable=False),
    Column("experiment", String(), nullable=False),
    Column("arm", String(), nullable=False),
    #: The arm came from X-Aligngate-Arm rather than the assignment (leave these out of A/B comparisons).
    Column("arm_forced", Boolean, nullable=False),
    #: Where the user key came from: header, user, api_key, random.
    Column("user_source", String(), nullable=False),
    #: SHA-256 (hex) of the user key; never the key itself. None for a random draw.
    Column("user_key_hash", String(64)),
    Column("bucket", Integer),
    Column("model", String(), nullable=False),
    Column("endpoint", String(), nullable=False),  # chat, completions
    Column("stream", Boolean, nullable=False),
    Column("status", Integer, nullable=False),
    #: Why a response that had started failed (a stream error code), or client_disconnected.
    Column("outcome", String()),
    #: Chat messages as sent; completions: ``[{"role": "user", "content": prompt}]`` (other prompts as sent).
    Column("messages", JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")),
    Column("rewritten_prompt", Text),
    #: The backend's answer before correction, and the answer the client got (first choice).
    Column("raw_answer", Text),
    Column("final_answer", Text),
    Column("latency_ms", Float, nullable=False),
    Column("ttft_ms", Float),
    Column("overhead_ms", Float, nullable=False),
    Column("rewriter_ms", Float),
    Column("aligner_ms", Float),
    Column("prompt_tokens", Integer),
    Column("completion_tokens", Integer),
    #: Why a helper left its input unchanged: a guard (``too_long_output`` ...) or ``failed:<reason>``.
    Column("rewriter_skipped", String()),
    Column("aligner_skipped", String()),
    #: The aligner's reward gate on choice 0 (``helpers.aligner.gate``): the reward model's scores of the raw
    #: answer and of its correction, and which was served (``corrected``, ``raw``); None when it did not judge.
    Column("gate_raw_score", Float),
    Column("gate_corrected_score", Float),
    Column("gate_decision", String(16)),
)

feedback = Table(
    "feedback", metadata,
    Column("id", String(64), primary_key=True),
    Column("request_id", String(128), nullable=False),
    Column("time", Float, nullable=False),
    Column("rating", SmallInteger, nullable=False),
    Column("comment", Text),
    Column("correction", Text),
)

shadow_runs = Table(
    "shadow_runs", metadata,
    #: The shadowed request's id (``requests.id``): at most one shadow run per request.
    Column("id", String(128), primary_key=True),
    #: When the shadow run ended (or was skipped), seconds since the epoch (UTC).
    Column("time", Float, nullable=False),
    Column("experiment", String(), nullable=False),
    #: The helpers it ran, as the arm that runs them: rewrite, align, rewrite+align.
    Column("arm", String(), nullable=False),
    #: Why the run did not happen (saturated, shutdown) or did not finish (cancelled); None when it ran.
    Column("skipped", String()),
    #: The rewriter's accepted rewrite of the last user message (the backend never saw it).
    Column("rewritten_prompt", Text),
    #: The aligner's accepted correction of the answer the client got (``requests.final_answer``, choice 0).
    Column("corrected", Text),
    Column("rewriter_ms", Float),
    Column("aligner_ms", Float),
    #: Why a helper's output was not accepted: a guard (``too_long_output`` ...) or ``failed:<reason>``.
    Column("rewriter_skipped", String()),
    Column("aligner_skipped", String()),
    #: The aligner's reward gate on the shadow correction, as on ``requests``.
    Column("gate_raw_score", Float),
    Column("gate_corrected_score", Float),
    Column("gate_decision", String(16)),
)

#: Columns added by migration 5 (the aligner's reward gate), by table.
GATE_COLUMNS = ("gate_raw_score", "gate_corrected_score", "gate_decision")

preferences = Table(
    "preferences", metadata,
    Column("id", String(64), primary_key=True),
    #: When the preference was given, seconds since the epoch (UTC).
    Column("time", Float, nullable=False),
    Column("request_a", String(128), nullable=False),
    Column("request_b", String(128), nullable=False),
    #: The arms of the two requests (``requests.arm``).
    Column("arm_a", String(), nullable=False),
    Column("arm_b", String(), nullable=False),
    #: ``a``, ``b`` or ``tie``.
    Column("preferred", String(8), nullable=False),
    #: Which request was shown on the left, ``a`` or ``b``; None when the client did not say.
    Column("left", String(8)),
    Column("comment", Text),
)

schema_version = Table(
    "schema_version", metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("applied", Float, nullable=False),
)

INDEXES = (
    Index("ix_requests_time", requests.c.time),
    Index("ix_requests_experiment_arm", requests.c.experiment, requests.c.arm),
    Index("ix_feedback_request_id", feedback.c.request_id, feedback.c.time),
)

#: Look-ups of the preferences that involve a request (created by migration 4, not 2: a v1 database has no table).
PREFERENCE_INDEXES = (
    Index("ix_preferences_request_a", preferences.c.request_a),
    Index("ix_preferences_request_b", preferences.c.request_b),
)

#: Column names of each table, in order (what a record must carry).
REQUEST_COLUMNS = tuple(c.name for c in requests.columns)
FEEDBACK_COLUMNS = tuple(c.name for c in feedback.columns)
SHADOW_COLUMNS = tuple(c.name for c in shadow_runs.columns)
PREFERENCE_COLUMNS = tuple(c.name for c in preferences.columns)


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    apply: Callable[[Connection], None]


def _v1_tables(conn: Connection) -> None:
    requests.create(conn, checkfirst=True)
    feedback.create(conn, checkfirst=True)


def _v2_indexes(conn: Connection) -> None:
    for index in INDEXES:
        index.create(conn, checkfirst=True)


def _v3_shadow_runs(conn: Connection) -> None:
    shadow_runs.create(conn, checkfirst=True)


def _v4_preferences(conn: Connection) -> None:
    preferences.create(conn, checkfirst=True)
    for index in PREFERENCE_INDEXES:
        index.create(conn, checkfirst=True)


def _v5_gate_columns(conn: Connection) -> None:
    for table in (requests, shadow_runs):
        present = {c["name"] for c in inspect(conn).get_columns(table.name)}
        for name in GATE_COLUMNS:
            if name not in present:
                column = table.c[name]
                kind = column.type.compile(dialect=conn.dialect)
                conn.execute(text(f'ALTER TABLE "{table.name}" ADD COLUMN "{name}" {kind}'))


#: Every schema change, in order. Append only: a database records the last version it applied.
MIGRATIONS: list[Migration] = [
    Migration(1, "requests and feedback tables", _v1_tables),
    Migration(2, "indexes for reports (time, experiment+arm) and feedback look-ups", _v2_indexes),
    Migration(3, "shadow_runs table (shadow mode: helpers run in the background on control traffic)",
              _v3_shadow_runs),
    Migration(4, "preferences table (pairwise preferences between two requests' answers)", _v4_preferences),
    Migration(5, "gate_raw_score, gate_corrected_score, gate_decision on requests and shadow_runs (the aligner's "
              "reward gate)", _v5_gate_columns),
]


def latest_version() -> int:
    return MIGRATIONS[-1].version


_PG_LOCK_ID = 0x616C6967  # "alig": serialises upgrades of several gateway replicas


async def upgrade(conn: AsyncConnection) -> tuple[int, int]:
    """Bring the database to the latest version inside ``conn``'s transaction; returns (before, after).

    A newer database than this gateway knows is left as it is (a rolling upgrade: old replicas keep writing
    the columns they know).
    """
    if conn.dialect.name == "postgresql":
        await conn.execute(text(f"SELECT pg_advisory_xact_lock({_PG_LOCK_ID})"))
    await conn.run_sync(lambda c: schema_version.create(c, checkfirst=True))
    current = (await conn.execute(select(func.max(schema_version.c.version)))).scalar() or 0
    target = latest_version()
    if current >= target:
        return current, current
    fresh = current == 0 and not await conn.run_sync(lambda c: inspect(c).has_table("requests"))
    if fresh:
        await conn.run_sync(lambda c: metadata.create_all(c, checkfirst=True))
        await conn.execute(schema_version.insert(), [{"version": target, "applied": time.time()}])
        return 0, target
    for migration in MIGRATIONS:
        if migration.version > current:
            await conn.run_sync(migration.apply)
            await conn.execute(schema_version.insert(), [{"version": migration.version, "applied": time.time()}])
    return current, target
