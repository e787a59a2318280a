"""The trace store: one row per inference request, and every feedback and pairwise preference, written off the
request path.

* **Never in the way.** ``submit`` (called by the middleware when a response has ended) puts a reference on
  a bounded ``asyncio.Queue`` and returns: O(1), no parsing, never raises. A background writer takes up to
  ``batch_size`` records or whatever arrived within ``flush_interval_s``, turns them into rows
  (``records.request_row``) and inserts them in one transaction (insert-or-ignore by id, ``inserts.py``).
* **Nothing lost.** When the database cannot be reached or an insert fails, the batch goes to a spill file
  (JSON lines, ``spill.SpillFiles``); the writer then leaves the database alone for ``retry_s`` (batches go
  straight to the spill file), tries again, and once a write succeeds it replays the spill files
  (idempotently: rows already there are ignored). A full queue spills instead of blocking the request or
  dropping the record, ``batch_size`` records at a time (or ``flush_interval_s`` after the first): one write and
  fsync for them all, since one each would cost the event loop about 0.2 ms per request just when it is
  overloaded. If even the spill file cannot be written, records wait in memory (up to
  ``_BACKLOG_MAX``, then they are dropped and counted). ``close`` (the app's shutdown) writes everything
  still queued, or spills it.
* **Several processes.** Each worker has its own writer; SQLite (WAL, busy timeout) and Postgres take
  concurrent writers, and the schema upgrade is serialised (``schema.upgrade``).

URLs: ``sqlite:///file.db`` (relative) or ``sqlite:////abs/file.db`` use aiosqlite; ``postgresql://...``
uses asyncpg (the ``postgres`` extra).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from pathlib import Path
from typing import Any, Literal

import orjson
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from gateway import metrics
from gateway.config import StoreSettings
from gateway.context import RequestContext
from gateway.store import schema
from gateway.store.inserts import insert_rows
from gateway.store.records import request_row
from gateway.store.spill import SpillFiles

logger = logging.getLogger(__name__)

Table = Literal["requests", "feedback", "shadow_runs", "preferences"]
_TABLES: dict[str, sa.Table] = {
    "requests": schema.requests, "feedback": schema.feedback, "shadow_runs": schema.shadow_runs,
    "preferences": schema.preferences,
}
#: Records kept in memory when neither the database nor the spill file can take them.
_BACKLOG_MAX = 100_000
#: Request ids this process submitted last (for feedback look-ups before their rows are written, and while the
#: database is down). Rows are written within ``flush_interval_s``; 10,000 ids cover 10 s of 1,000 requests a second
#: (about 1.4 MiB); an older request is looked up in the database.
_RECENT_MAX = 10_000
_REPLAY_BATCH = 500
#: How often an idle writer looks for spill files of stopped processes (seconds).
_SCAN_S = 30.0


class StoreUnavailable(Exception):
    """The database cannot answer now."""


def async_url(url: str) -> sa.URL:
    """The SQLAlchemy URL with an async driver: sqlite → aiosqlite, postgresql/postgres → asyncpg."""
    if url.lower().startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://"):]
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite" and parsed.drivername == "sqlite":
        return parsed.set(drivername="sqlite+aiosqlite")
    if backend == "postgresql" and parsed.drivername == "postgresql":
        return parsed.set(drivername="postgresql+asyncpg")
    return parsed


def default_spill_path(url: str) -> Path:
    parsed = async_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        return Path(f"{parsed.database}.spill")
    return Path("aligngate.spill")


# ("request", (ctx, status, duration_s, overhead_s, finished)), ("feedback", row), ("preference", row) or
# ("shadow", row)
_Item = tuple[str, Any]


class Store:
    """One process's view of the trace store (see the module docstring)."""

    def __init__(self, settings: StoreSettings) -> None:
        self.settings = settings
        self.url = async_url(settings.url)
        self.log_bodies = settings.log_bodies
        self.spill = SpillFiles(settings.spill_path or default_spill_path(settings.url))
        self._queue: asyncio.Queue[_Item] = asyncio.Queue(settings.queue_size)
        self._arrived = asyncio.Event()  # a record was queued
        self._wake = asyncio.Event()  # write now: the batch is full, a flush or the close was asked for
        self._ready_lock = asyncio.Lock()
        self._engine: AsyncEngine | None = None
        self._ready = False
        self._down_until = 0.0
        self._down_logged = False
        self._spill_pending = False
        self._backlog: collections.deque[tuple[str, dict[str, Any]]] = collections.deque()
        self._recent: collections.OrderedDict[str, str] = collections.OrderedDict()
        self._writer: asyncio.Task[None] | None = None
        self._closing = False
        self._closed = False
        self._flushing = 0  # callers waiting in flush(): write without waiting for the batch to fill
        #: Records that found the queue full, spilled together (``_overflow_put``).
        self._overflow: list[_Item] = []
        self._overflow_timer: asyncio.TimerHandle | None = None

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Connect and upgrade the schema (a failure is logged, not raised: records spill meanwhile), replay
        spill files left by earlier runs, and start the writer."""
        self._spill_pending = self.spill.pending()
        try:
            await asyncio.wait_for(self._ensure_ready(), self.settings.timeout_s + 5)
        except Exception as exc:
            self._mark_down(exc)
        self._writer = asyncio.get_running_loop().create_task(self._run(), name="aligngate-store-writer")

    async def close(self, timeout_s: float = 15.0) -> None:
        """Write everything still queued (spill what cannot be written), stop the writer, release the database."""
        if self._closed:
            return
        self._closing = True
        self._wake.set()
        self._arrived.set()
        if self._writer is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._writer), timeout_s)
            except Exception as exc:
                if isinstance(exc, TimeoutError):
                    logger.warning("trace store: writing the queue took over %g s; spilling the rest", timeout_s)
                else:
                    logger.exception("trace store writer failed")
                self._writer.cancel()
                with contextlib.suppress(BaseException):
                    await self._writer
        self._closed = True
        self._spill_overflow()
        leftover = self._drain_nowait()
        if leftover:
            self._spill(self._rows(leftover))
            self._done(leftover)
        if self._backlog:
            logger.error("trace store: %d records could be neither written nor spilled; they are lost",
                         len(self._backlog))
            metrics.STORE_RECORDS.labels("dropped").inc(len(self._backlog))
            self._backlog.clear()
        self.spill.close()
        if self._engine is not None:
            await self._engine.dispose()
            self._engine = None

    # ------------------------------------------------------------------ the request path

    def submit(self, ctx: RequestContext, status: int, duration_s: float, overhead_s: float) -> None:
        """Record a finished request (the middleware's finish hook): O(1), never raises."""
        try:
            item: _Item = ("request", (ctx, status, duration_s, overhead_s, time.time()))
            recent = self._recent
            recent[ctx.request_id] = ctx.arm or "control"
            if len(recent) > _RECENT_MAX:
                recent.popitem(last=False)
            self._put(item)
        except Exception:
            logger.exception("trace store: could not record request %s", ctx.request_id)

    def submit_feedback(self, row: dict[str, Any]) -> None:
        self._put(("feedback", row))

    def submit_preference(self, row: dict[str, Any]) -> None:
        """Record a pairwise preference (a ``preferences`` row)."""
        self._put(("preference", row))

    def submit_shadow(self, row: dict[str, Any]) -> None:
        """Record a shadow run (a ``shadow_runs`` row, ``records.shadow_row``): O(1), never raises."""
        try:
            self._put(("shadow", row))
        except Exception:
            logger.exception("trace store: could not record the shadow run of request %s", row.get("id"))

    def _put(self, item: _Item) -> None:
        if self._closed:
            self._spill(self._rows([item]))
            return
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            self._overflow_put(item)
            return
        self._arrived.set()
        if self._queue.qsize() >= self.settings.batch_size:
            self._wake.set()

    def _overflow_put(self, item: _Item) -> None:
        """A record that found the queue full: spilled with the next ones, once ``batch_size`` of them wait or
        ``flush_interval_s`` after the first (so at most ``batch_size`` more records are held in memory)."""
        overflow = self._overflow
        overflow.append(item)
        if len(overflow) >= self.settings.batch_size:
            self._spill_overflow()
        elif self._overflow_timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # not on the event loop: nothing would spill it later
                self._spill_overflow()
                return
            self._overflow_timer = loop.call_later(self.settings.flush_interval_s, self._spill_overflow)

    def _spill_overflow(self) -> None:
        if self._overflow_timer is not None:
            self._overflow_timer.cancel()
            self._overflow_timer = None
        items, self._overflow = self._overflow, []
        if items:
            self._spill(self._rows(items))

    # ------------------------------------------------------------------ reads

    def recent_arm(self, request_id: str) -> str | None:
        """The arm of a request this process recorded lately (its row may not be written yet)."""
        return self._recent.get(request_id)

    async def find_request(self, request_id: str) -> str | None:
        """The arm of request ``request_id``, or None when the database has no such row."""
        engine = await self._engine_for_reads()
        try:
            async with engine.connect() as conn:
                row = (await conn.execute(
                    sa.select(schema.requests.c.arm).where(schema.requests.c.id == request_id)
                )).first()
        except Exception as exc:
            raise StoreUnavailable(str(exc)) from exc
        return None if row is None else str(row[0])

    async def query(self, statement: Any) -> list[dict[str, Any]]:
        """Rows of a read-only statement, as dicts (reports, exports, tests)."""
        engine = await self._engine_for_reads()
        try:
            async with engine.connect() as conn:
                result = await conn.execute(statement)
                return [dict(r._mapping) for r in result]
        except Exception as exc:
            raise StoreUnavailable(str(exc)) from exc

    async def flush(self, timeout_s: float = 10.0) -> None:
        """Write what is queued now, without waiting for the batch to fill; returns once it is written (or
        spilled)."""
        self._spill_overflow()
        self._flushing += 1
        self._wake.set()
        try:
            await asyncio.wait_for(self._queue.join(), timeout_s)
        finally:
            self._flushing -= 1

    async def reads_engine(self) -> AsyncEngine:
        """The engine this store reads with (pooled, the store's own), for read-only reports that run their own
        statements (``/ui/api/experiment``); :class:`StoreUnavailable` while the database is down."""
        return await self._engine_for_reads()

    async def _engine_for_reads(self) -> AsyncEngine:
        if time.monotonic() < self._down_until:
            raise StoreUnavailable("the database failed recently; retrying soon")
        try:
            await self._ensure_ready()
        except Exception as exc:
            self._mark_down(exc)
            raise StoreUnavailable(str(exc)) from exc
        assert self._engine is not None
        return self._engine

    # ------------------------------------------------------------------ the database

    def _make_engine(self) -> AsyncEngine:
        url = self.url
        timeout = self.settings.timeout_s
        if url.get_backend_name() == "sqlite":
            if url.database and url.database != ":memory:":
                Path(url.database).parent.mkdir(parents=True, exist_ok=True)
            engine = create_async_engine(url, connect_args={"timeout": timeout})

            @event.listens_for(engine.sync_engine, "connect")
            def _sqlite_connect(dbapi_conn: Any, _record: Any) -> None:
                # Real transactions (the driver's own handling skips BEGIN before DDL), WAL so that readers
                # never wait on the writer, NORMAL sync (durable at checkpoints, fast per transaction).
                dbapi_conn.isolation_level = None
                cursor = dbapi_conn.cursor()
                cursor.execute("PRAGMA journal_mode=WAL")
                cursor.execute("PRAGMA synchronous=NORMAL")
                cursor.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
                cursor.close()

            @event.listens_for(engine.sync_engine, "begin")
            def _sqlite_begin(conn: Any) -> None:
                conn.exec_driver_sql("BEGIN")

            return engine
        connect_args: dict[str, Any] = {}
        if url.get_backend_name() == "postgresql":
            connect_args = {"timeout": timeout, "command_timeout": timeout}
        return create_async_engine(url, pool_pre_ping=True, connect_args=connect_args)

    async def _ensure_ready(self) -> None:
        if self._ready:
            return
        async with self._ready_lock:
            if self._ready:
                return
            if self._engine is None:
                self._engine = self._make_engine()
            for attempt in range(5):
                try:
                    async with self._engine.begin() as conn:
                        before, after = await schema.upgrade(conn)
                    break
                except OperationalError as exc:  # another process upgrading at the same time (SQLite: busy)
                    text = str(exc).lower()
                    if attempt == 4 or ("locked" not in text and "busy" not in text):
                        raise
                    await asyncio.sleep(0.1 * (attempt + 1))
            if before != after:
                logger.info("trace store %s: schema upgraded from version %d to %d", self._safe_url(), before, after)
            self._ready = True

    def _safe_url(self) -> str:
        return self.url.render_as_string(hide_password=True)

    def _mark_down(self, exc: BaseException) -> None:
        self._down_until = time.monotonic() + self.settings.retry_s
        if not self._down_logged:
            self._down_logged = True
            logger.warning("trace store %s unavailable (%s); records go to %s until it is back",
                           self._safe_url(), str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
                           self.spill.dir / f"{self.spill.stem}.*.jsonl")

    async def _insert(self, records: list[tuple[str, dict[str, Any]]]) -> None:
        await self._ensure_ready()
        assert self._engine is not None
        by_table: dict[str, list[dict[str, Any]]] = {}
        for table, row in records:
            by_table.setdefault(table, []).append(row)
        async with self._engine.begin() as conn:
            for table, rows in by_table.items():
                await insert_rows(conn, _TABLES[table], rows)

    # ------------------------------------------------------------------ the writer

    def _drain_nowait(self, limit: int | None = None) -> list[_Item]:
        items: list[_Item] = []
        while limit is None or len(items) < limit:
            try:
                items.append(self._queue.get_nowait())
            except asyncio.QueueEmpty:
                break
        return items

    def _done(self, items: list[_Item]) -> None:
        for _ in items:
            self._queue.task_done()

    def _rows(self, items: list[_Item]) -> list[tuple[str, dict[str, Any]]]:
        rows: list[tuple[str, dict[str, Any]]] = []
        for kind, payload in items:
            try:
                if kind == "request":
                    rows.append(("requests", request_row(*payload)))
                elif kind == "shadow":
                    rows.append(("shadow_runs", payload))
                elif kind == "preference":
                    rows.append(("preferences", payload))
                else:
                    rows.append(("feedback", payload))
            except Exception:  # a bug here must cost one record, not the writer
                logger.exception("trace store: could not build the %s record; it is dropped", kind)
                metrics.STORE_RECORDS.labels("dropped").inc()
        return rows

    async def _run(self) -> None:
        while True:
            try:
                if await self._step():
                    return
            except Exception:  # a bug must not stop recording: log it and go on
                logger.exception("trace store writer: unexpected error")
                await asyncio.sleep(self.settings.flush_interval_s)

    async def _step(self) -> bool:
        """One round of the writer: replay if something awaits it, wait for records, write a batch. True when
        the store is closing and nothing is left."""
        batch_size = self.settings.batch_size
        if self._spill_pending or self._backlog:
            await self._try_replay()
        if self._queue.empty():
            if self._closing:
                return True
            # wait for a record or the close; with records awaiting replay, retry every retry_s meanwhile,
            # else look now and then for spill files a stopped process left behind
            self._arrived.clear()
            retry = self._spill_pending or bool(self._backlog)
            try:
                await asyncio.wait_for(self._arrived.wait(), self.settings.retry_s if retry else _SCAN_S)
            except TimeoutError:
                if not retry:
                    self._spill_pending = self.spill.pending()
            return False
        if self._queue.qsize() < batch_size and not self._closing and not self._flushing:
            # give the batch flush_interval_s to fill (``_put`` wakes us early once it is full)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.settings.flush_interval_s)
        items = self._drain_nowait(batch_size)
        rows = self._rows(items)
        try:
            await self._write(rows)
        except asyncio.CancelledError:  # the close gave up waiting on the database: the batch spills, not lost
            self._spill(rows)
            raise
        finally:
            self._done(items)
        return False

    async def _write(self, rows: list[tuple[str, dict[str, Any]]]) -> None:
        if not rows:
            return
        if time.monotonic() < self._down_until:
            self._spill(rows)
            return
        try:
            await self._insert(rows)
        except Exception as exc:
            self._ready = False
            self._mark_down(exc)
            self._spill(rows)
            return
        self._count(rows, "written")
        if self._down_logged:
            self._down_logged = False
            logger.info("trace store %s is back", self._safe_url())

    def _spill(self, rows: list[tuple[str, dict[str, Any]]]) -> None:
        if not rows:
            return
        try:
            self.spill.append(rows)
        except OSError as exc:
            room = _BACKLOG_MAX - len(self._backlog)
            keep, lost = rows[:max(room, 0)], rows[max(room, 0):]
            self._backlog.extend(keep)
            if lost:
                metrics.STORE_RECORDS.labels("dropped").inc(len(lost))
            logger.error("trace store: cannot write spill file in %s (%s); %d records held in memory, %d dropped",
                         self.spill.dir, exc, len(self._backlog), len(lost))
            return
        if self._closed:  # nobody will replay from this process: let the next one take the file
            self.spill.close()
        self._spill_pending = True
        self._count(rows, "spilled")

    @staticmethod
    def _count(rows: list[tuple[str, dict[str, Any]]], outcome: str) -> None:
        metrics.STORE_RECORDS.labels(outcome).inc(len(rows))

    async def _healthy(self) -> bool:
        try:
            assert self._engine is not None
            async with self._engine.connect() as conn:
                await conn.execute(sa.text("SELECT 1"))
        except Exception:
            return False
        return True

    async def _replay_chunk(self, chunk: list[tuple[str, dict[str, Any]]]) -> None:
        """Insert replayed records; rows the database refuses while it works (a poison row) are set aside in
        ``<spill>-rejected.jsonl`` so that they cannot hold up the others. Raises when the database is down."""
        try:
            await self._insert(chunk)
            self._count(chunk, "replayed")
            return
        except Exception:
            if len(chunk) == 0 or not await self._healthy():
                raise
        for record in chunk:
            try:
                await self._insert([record])
            except Exception as exc:
                if not await self._healthy():
                    raise
                self._reject(record, exc)
            else:
                self._count([record], "replayed")

    def _reject(self, record: tuple[str, dict[str, Any]], exc: Exception) -> None:
        path = self.spill.dir / f"{self.spill.stem}-rejected.jsonl"
        logger.error("trace store: the database refuses a %s row (%s); set aside in %s",
                     record[0], str(exc).splitlines()[0] if str(exc) else type(exc).__name__, path)
        metrics.STORE_RECORDS.labels("rejected").inc()
        try:
            with open(path, "ab") as fh:
                fh.write(orjson.dumps({"table": record[0], "row": record[1], "error": str(exc)[:500]}) + b"\n")
        except OSError:
            logger.exception("trace store: cannot write %s; the row is lost", path)

    async def _try_replay(self) -> None:
        """Put spilled (and in-memory) records into the database, once it takes writes again."""
        if time.monotonic() < self._down_until:
            return
        try:
            await self._ensure_ready()
            while self._backlog:
                held = [self._backlog.popleft() for _ in range(min(_REPLAY_BATCH, len(self._backlog)))]
                try:
                    await self._replay_chunk(held)
                except Exception:
                    self._backlog.extendleft(reversed(held))
                    raise
        except Exception as exc:
            self._ready = False
            self._mark_down(exc)
            return
        claimed = self.spill.claim()
        replayed = 0
        try:
            while claimed:
                path, fh = claimed[0]
                chunk: list[tuple[str, dict[str, Any]]] = []
                for record in self.spill.records(fh):
                    if record is None or record[0] not in _TABLES:
                        logger.warning("trace store: skipping an unreadable line in %s", path)
                        metrics.STORE_RECORDS.labels("dropped").inc()
                        continue
                    chunk.append(record)
                    if len(chunk) >= _REPLAY_BATCH:
                        await self._replay_chunk(chunk)
                        replayed += len(chunk)
                        chunk = []
                if chunk:
                    await self._replay_chunk(chunk)
                    replayed += len(chunk)
                self.spill.done(path, fh)
                claimed.pop(0)
        except Exception as exc:
            self._ready = False
            self._mark_down(exc)
        finally:
            for _, fh in claimed:
                self.spill.release(fh)
        if replayed:
            logger.info("trace store: replayed %d spilled records", replayed)
        self._spill_pending = bool(claimed) or self.spill.pending()
