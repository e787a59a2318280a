"""Read-only access to the trace store, for ``aligngate ab report`` and ``aligngate data export``.

* **Read only.** Unlike :class:`gateway.store.store.Store`, nothing here creates tables, runs schema upgrades
  or writes: a SQLite URL must name an existing file (a typo must not leave an empty database behind), and
  SQLite connections run with ``PRAGMA query_only``. The columns read are named one by one, so a database
  with more columns (a newer schema) reads the same.
* **One snapshot of what a report needs.** :func:`read_store` returns the ``requests`` rows that match a
  :class:`Selection` (experiment, time, forced arms) and, for each of them that has feedback, a
  :class:`FeedbackSummary`: the **latest** rating (by feedback time, then id), the latest non-empty
  correction, and how many feedback rows it has.
* **Shadow runs.** With ``shadow=True``, :func:`read_store` also reads the ``shadow_runs`` row of each selected
  request that has one (:class:`ShadowRecord`; ``aligngate eval --from-store`` judges the answer served against
  the shadow correction). A store from before shadow mode simply has none.
* **Pairwise preferences.** :func:`read_store` also reads the ``preferences`` rows (by time, then id) whose
  ``request_a`` or ``request_b`` is among the requests the selection's experiment and ``since`` pick, **forced-arm
  requests included** whatever ``include_forced`` says: the playground that asks people to compare two answers
  forces each request's arm, so those comparisons are forced by design (the two arms answered the same prompt).
  A store from before preferences (no table) simply has none.
* **Errors a user can act on.** Every failure to reach or read the database is a :class:`StoreError` whose
  message names the store (password hidden) and the cause; an unknown experiment is an
  :class:`UnknownExperiment` that lists the experiments the store has.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from gateway.store import schema
from gateway.store.store import async_url

__all__ = [
    "ExperimentInfo",
    "FeedbackSummary",
    "PreferenceRecord",
    "RequestRecord",
    "Selection",
    "ShadowRecord",
    "Snapshot",
    "StoreError",
    "UnknownExperiment",
    "format_time",
    "parse_since",
    "preference_record",
    "read",
    "read_store",
    "safe_url",
]


class StoreError(Exception):
    """The store cannot be read; the message says which store and why."""


class UnknownExperiment(StoreError):
    """The experiment asked for has no requests in the store."""


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """The columns of one ``requests`` row that reports and exports use (text fields: None without bodies)."""

    id: str
    time: float
    experiment: str
    arm: str
    arm_forced: bool
    endpoint: str
    status: int
    outcome: str | None
    latency_ms: float
    rewriter_ms: float | None = None
    aligner_ms: float | None = None
    rewriter_skipped: str | None = None
    aligner_skipped: str | None = None
    messages: Any = None
    rewritten_prompt: str | None = None
    raw_answer: str | None = None
    final_answer: str | None = None

    @property
    def ok(self) -> bool:
        """Answered without error: status below 400 and no failure after the response started."""
        return self.status < 400 and self.outcome in (None, "", "ok")


@dataclass(frozen=True, slots=True)
class FeedbackSummary:
    """A request's feedback history, reduced: the latest rating counts; the latest non-empty correction."""

    count: int
    rating: int
    correction: str | None


@dataclass(frozen=True, slots=True)
class ShadowRecord:
    """One ``shadow_runs`` row: what the helpers made for a request in shadow mode (text: None without bodies)."""

    id: str
    time: float
    arm: str
    skipped: str | None = None
    rewritten_prompt: str | None = None
    corrected: str | None = None
    rewriter_ms: float | None = None
    aligner_ms: float | None = None
    rewriter_skipped: str | None = None
    aligner_skipped: str | None = None


@dataclass(frozen=True, slots=True)
class PreferenceRecord:
    """One ``preferences`` row: a person compared two answers (requests ``a`` and ``b``, usually of two arms given
    the same prompt) and preferred one of them, or neither (``tie``)."""

    id: str
    time: float
    request_a: str
    request_b: str
    arm_a: str
    arm_b: str
    #: ``a``, ``b`` or ``tie``.
    preferred: str
    #: Which request the person saw on the left (``a`` or ``b``; None when not told): position bias shows here.
    left: str | None = None
    comment: str | None = None


@dataclass(frozen=True, slots=True)
class ExperimentInfo:
    name: str
    requests: int
    first: float
    last: float


@dataclass(frozen=True, slots=True)
class Selection:
    """Which requests to read: ``experiment`` (None: all), from ``since`` (epoch seconds), forced arms or not."""

    experiment: str | None = None
    since: float | None = None
    include_forced: bool = True


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What :func:`read_store` read: the matching requests (by time, then id) and their feedback."""

    url: str
    #: The experiment read (None: all of them).
    experiment: str | None
    experiments: tuple[ExperimentInfo, ...]
    requests: tuple[RequestRecord, ...]
    feedback: dict[str, FeedbackSummary]
    #: Forced-arm requests left out by ``Selection.include_forced=False`` (still counted here).
    forced_excluded: int = 0
    #: Request id -> its shadow run (read with ``shadow=True`` only).
    shadow: dict[str, ShadowRecord] = field(default_factory=dict)
    #: Pairwise preferences between requests of the experiment read (by time).
    preferences: tuple[PreferenceRecord, ...] = ()


_META_COLUMNS = (
    "id", "time", "experiment", "arm", "arm_forced", "endpoint", "status", "outcome", "latency_ms",
    "rewriter_ms", "aligner_ms", "rewriter_skipped", "aligner_skipped",
)
_BODY_COLUMNS = ("messages", "rewritten_prompt", "raw_answer", "final_answer")
_PREFERENCE_COLUMNS = ("id", "time", "request_a", "request_b", "arm_a", "arm_b", "preferred", "left", "comment")
_SHADOW_COLUMNS = (
    "id", "time", "arm", "skipped", "rewritten_prompt", "corrected", "rewriter_ms", "aligner_ms",
    "rewriter_skipped", "aligner_skipped",
)


def safe_url(url: str) -> str:
    """``url`` with any password hidden (for messages and reports)."""
    try:
        return sa.make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy can parse: hide what looks like a password all the same
        return re.sub(r"(//[^/:@]*):[^/@]*@", r"\1:***@", url)


def parse_since(text: str) -> float:
    """An ISO 8601 date or time (``2026-05-01``, ``2026-05-01T12:00``, ``...+02:00``, ``...Z``) as epoch
    seconds; without a UTC offset it is UTC. Raises ``ValueError`` with a message for anything else."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"--since must be an ISO 8601 date or time (e.g. 2026-05-01 or 2026-05-01T12:00Z), "
                         f"not {text!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def format_time(epoch: float) -> str:
    """Epoch seconds as ``YYYY-MM-DD HH:MM:SS UTC``."""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _engine(url: str, timeout_s: float) -> AsyncEngine:
    try:
        parsed = async_url(url)
    except Exception as exc:
        raise StoreError(f"cannot read the store {safe_url(url)!r}: not a database URL ({_first_line(exc)})") from None
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        database = parsed.database
        if database in (None, "", ":memory:"):
            raise StoreError(f"cannot read the store {url!r}: give the path of a SQLite file (sqlite:///path.db)")
        assert database is not None
        if not Path(database).is_file():
            raise StoreError(f"cannot read the store {url!r}: no database file at {Path(database).resolve()}")
        try:
            engine = create_async_engine(parsed, connect_args={"timeout": timeout_s})
        except Exception as exc:
            raise StoreError(f"cannot read the store {url!r}: {_first_line(exc)}") from None

        @event.listens_for(engine.sync_engine, "connect")
        def _read_only(dbapi_conn: Any, _record: Any) -> None:
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA query_only=ON")
            cursor.execute(f"PRAGMA busy_timeout={int(timeout_s * 1000)}")
            cursor.close()

        return engine
    if backend != "postgresql":
        raise StoreError(f"cannot read the store {safe_url(url)!r}: only sqlite:/// and postgresql:// URLs are "
                         "supported")
    try:
        return create_async_engine(parsed, connect_args={"timeout": timeout_s, "command_timeout": None})
    except ImportError:
        raise StoreError(f"cannot read the store {safe_url(url)!r}: Postgres needs the asyncpg driver "
                         "(`pip install 'aligngate[postgres]'`)") from None
    except Exception as exc:
        raise StoreError(f"cannot read the store {safe_url(url)!r}: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    if isinstance(exc, sa.exc.DBAPIError) and exc.orig is not None:  # the driver's words, not SQLAlchemy's wrapper
        exc = exc.orig
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _columns(names: Sequence[str]) -> list[sa.Column[Any]]:
    return [schema.requests.c[name] for name in names]


async def _experiments(conn: AsyncConnection) -> tuple[ExperimentInfo, ...]:
    r = schema.requests.c
    result = await conn.execute(
        sa.select(r.experiment, sa.func.count(), sa.func.min(r.time), sa.func.max(r.time)).group_by(r.experiment)
    )
    infos = [ExperimentInfo(str(name), int(n), float(first), float(last)) for name, n, first, last in result]
    return tuple(sorted(infos, key=lambda e: (e.last, e.name)))


def _where(selection: Selection, experiment: str | None) -> list[sa.ColumnElement[bool]]:
    r = schema.requests.c
    where: list[sa.ColumnElement[bool]] = []
    if experiment is not None:
        where.append(r.experiment == experiment)
    if selection.since is not None:
        where.append(r.time >= selection.since)
    return where


async def _fetch_shadow(conn: AsyncConnection, where: list[sa.ColumnElement[bool]]) -> list[dict[str, Any]]:
    """The ``shadow_runs`` rows of the requests ``where`` selects (none when the table does not exist)."""
    if not await conn.run_sync(lambda c: sa.inspect(c).has_table("shadow_runs")):
        return []
    s = schema.shadow_runs
    result = await conn.execute(
        sa.select(*[s.c[name] for name in _SHADOW_COLUMNS])
        .select_from(s.join(schema.requests, s.c.id == schema.requests.c.id))
        .where(*where)
        .order_by(s.c.id)
    )
    return [dict(row._mapping) for row in result]


async def _fetch_preferences(conn: AsyncConnection, where: list[sa.ColumnElement[bool]]) -> list[dict[str, Any]]:
    """The ``preferences`` rows involving a request ``where`` selects (none when the table does not exist)."""
    if not await conn.run_sync(lambda c: sa.inspect(c).has_table("preferences")):
        return []
    p = schema.preferences.c
    selected = sa.select(schema.requests.c.id).where(*where)
    result = await conn.execute(
        sa.select(*[p[name] for name in _PREFERENCE_COLUMNS])
        .where(sa.or_(p.request_a.in_(selected), p.request_b.in_(selected)))
        .order_by(p.time, p.id)
    )
    return [dict(row._mapping) for row in result]


def preference_record(row: Mapping[str, Any]) -> PreferenceRecord:
    """A ``preferences`` row as a :class:`PreferenceRecord`."""
    return PreferenceRecord(
        id=str(row["id"]), time=float(row["time"]), request_a=str(row["request_a"]),
        request_b=str(row["request_b"]), arm_a=str(row["arm_a"]), arm_b=str(row["arm_b"]),
        preferred=str(row["preferred"]), left=row["left"], comment=row["comment"],
    )


def _shadow_record(row: dict[str, Any]) -> ShadowRecord:
    def ms(value: Any) -> float | None:
        return None if value is None else float(value)

    return ShadowRecord(
        id=str(row["id"]), time=float(row["time"]), arm=str(row["arm"]), skipped=row["skipped"],
        rewritten_prompt=row["rewritten_prompt"], corrected=row["corrected"], rewriter_ms=ms(row["rewriter_ms"]),
        aligner_ms=ms(row["aligner_ms"]), rewriter_skipped=row["rewriter_skipped"],
        aligner_skipped=row["aligner_skipped"],
    )


async def _fetch(
    conn: AsyncConnection, selection: Selection, bodies: bool, latest_by_default: bool
) -> tuple[tuple[ExperimentInfo, ...], str | None, list[dict[str, Any]], list[dict[str, Any]]]:
    has_requests = await conn.run_sync(lambda c: sa.inspect(c).has_table("requests"))
    if not has_requests:
        raise StoreError("not an aligngate trace store: it has no `requests` table")
    has_feedback = await conn.run_sync(lambda c: sa.inspect(c).has_table("feedback"))
    experiments = await _experiments(conn)
    experiment = selection.experiment
    if experiment is None and latest_by_default and experiments:
        experiment = experiments[-1].name
    if experiment is not None and experiment not in {e.name for e in experiments}:
        return experiments, experiment, [], []
    where = _where(selection, experiment)
    names = _META_COLUMNS + (_BODY_COLUMNS if bodies else ())
    result = await conn.execute(
        sa.select(*_columns(names)).where(*where).order_by(schema.requests.c.time, schema.requests.c.id)
    )
    requests = [dict(row._mapping) for row in result]
    feedback: list[dict[str, Any]] = []
    if has_feedback:
        f = schema.feedback.c
        result = await conn.execute(
            sa.select(f.id, f.request_id, f.time, f.rating, f.correction)
            .select_from(schema.feedback.join(schema.requests, f.request_id == schema.requests.c.id))
            .where(*where)
            .order_by(f.request_id, f.time, f.id)
        )
        feedback = [dict(row._mapping) for row in result]
    return experiments, experiment, requests, feedback


def _record(row: dict[str, Any]) -> RequestRecord:
    return RequestRecord(
        id=str(row["id"]),
        time=float(row["time"]),
        experiment=str(row["experiment"]),
        arm=str(row["arm"]),
        arm_forced=bool(row["arm_forced"]),
        endpoint=str(row["endpoint"]),
        status=int(row["status"]),
        outcome=row["outcome"],
        latency_ms=float(row["latency_ms"]),
        rewriter_ms=None if row["rewriter_ms"] is None else float(row["rewriter_ms"]),
        aligner_ms=None if row["aligner_ms"] is None else float(row["aligner_ms"]),
        rewriter_skipped=row["rewriter_skipped"],
        aligner_skipped=row["aligner_skipped"],
        messages=row.get("messages"),
        rewritten_prompt=row.get("rewritten_prompt"),
        raw_answer=row.get("raw_answer"),
        final_answer=row.get("final_answer"),
    )


def _summaries(rows: list[dict[str, Any]]) -> dict[str, FeedbackSummary]:
    """Rows ordered by (request_id, time, id) → one summary per request: the last row's rating counts."""
    out: dict[str, FeedbackSummary] = {}
    for row in rows:
        rid = str(row["request_id"])
        before = out.get(rid)
        correction = row["correction"] if isinstance(row["correction"], str) and row["correction"].strip() else None
        out[rid] = FeedbackSummary(
            count=(before.count if before else 0) + 1,
            rating=int(row["rating"]),
            correction=correction if correction is not None else (before.correction if before else None),
        )
    return out


async def read_store(
    url: str,
    selection: Selection,
    *,
    bodies: bool = False,
    latest_by_default: bool = False,
    timeout_s: float = 5.0,
    shadow: bool = False,
    engine: AsyncEngine | None = None,
) -> Snapshot:
    """The requests matching ``selection``, their feedback, and the preferences involving them (see the module
    docstring).

    ``bodies``: also read the text columns (messages, rewritten prompt, answers). ``latest_by_default``: with
    no experiment in ``selection``, read only the most recent experiment (the one of the latest request).
    ``shadow``: also read the selected requests' ``shadow_runs`` rows. ``engine``: read through this engine
    (a running gateway's store's, left open) instead of one made for this call and disposed after it.
    Raises :class:`StoreError` (:class:`UnknownExperiment` for an experiment the store does not have).
    """
    owned = engine is None
    engine = _engine(url, timeout_s) if engine is None else engine
    try:
        async with engine.connect() as conn:
            experiments, experiment, rows, feedback_rows = await _fetch(conn, selection, bodies, latest_by_default)
            shadow_rows = await _fetch_shadow(conn, _where(selection, experiment)) if shadow else []
            preference_rows = await _fetch_preferences(conn, _where(selection, experiment))
    except StoreError as exc:
        raise StoreError(f"cannot read the store {safe_url(url)!r}: {exc}") from None
    except Exception as exc:  # the database, its driver or the network: tell the user, no traceback
        raise StoreError(f"cannot read the store {safe_url(url)!r}: {_first_line(exc)}") from None
    finally:
        if owned:
            with contextlib.suppress(Exception):
                await engine.dispose()
    if experiment is not None and experiment not in {e.name for e in experiments}:
        known = ", ".join(f"{e.name} ({e.requests} requests)" for e in reversed(experiments)) or "none"
        raise UnknownExperiment(f"experiment {experiment!r} has no requests in {safe_url(url)} (experiments: {known})")
    records = [_record(row) for row in rows]
    forced = 0
    if not selection.include_forced:
        forced = sum(1 for rec in records if rec.arm_forced)
        records = [rec for rec in records if not rec.arm_forced]
    kept = {rec.id for rec in records}
    feedback = {rid: s for rid, s in _summaries(feedback_rows).items() if rid in kept}
    shadow_runs = {str(row["id"]): _shadow_record(row) for row in shadow_rows if str(row["id"]) in kept}
    preferences = tuple(preference_record(row) for row in preference_rows)
    return Snapshot(safe_url(url), experiment, experiments, tuple(records), feedback, forced, shadow_runs,
                    preferences)


def read(
    url: str,
    selection: Selection,
    *,
    bodies: bool = False,
    latest_by_default: bool = False,
    timeout_s: float = 5.0,
    shadow: bool = False,
) -> Snapshot:
    """:func:`read_store` from synchronous code (the CLI)."""
    return asyncio.run(
        read_store(url, selection, bodies=bodies, latest_by_default=latest_by_default, timeout_s=timeout_s,
                   shadow=shadow)
    )
