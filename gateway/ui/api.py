"""What ``/ui/api/*`` answers: reads of the running gateway's trace store and settings, for the web pages.

* **Through the gateway's own store.** Traces are read with :meth:`gateway.store.store.Store.query` (its read
  engine; nothing is written). A row still in the write queue is not there yet (it is written within
  ``store.flush_interval_s``). With the store disabled, or while the database cannot answer, every read is a 503
  ``store_unavailable``.
* **Traces, newest first** (time, then id, descending), filtered by arm, model, status (``ok``: below 400 and no
  failure after the response started, as the A/B report counts it; ``error``: the others; or one status) and
  whether the request has feedback. Pages are cut by ``before``: each answer's ``next_before`` is the time of
  its last row, and a page never ends inside a run of rows sharing one time (those go to the next page whole),
  unless the whole page is one such run (more than ``limit`` requests stored at the same microsecond: the rest
  of that run is then skipped).
* **The experiment** is :func:`gateway.report.ab.summarize` over :func:`gateway.report.source.read_store` of the
  store's URL and ``experiment.name`` (forced-arm requests left out, as ``aligngate ab report`` does; the
  sample-ratio check against this gateway's own ``experiment.arms`` weights), as
  :func:`gateway.report.abjson.report_json` (the keys are documented there).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from gateway.auth import ApiKeyAuth
from gateway.config import ARMS, Settings
from gateway.errors import NotFound, StoreUnavailableError
from gateway.report.ab import summarize
from gateway.report.abjson import report_json
from gateway.report.abstats import ConfiguredExperiment
from gateway.report.source import Selection, StoreError, UnknownExperiment, read_store
from gateway.store import schema
from gateway.store.store import Store, StoreUnavailable
from gateway.ui.schemas import (
    PROMPT_CHARS,
    ExperimentAnswer,
    ExperimentQuery,
    FeedbackRow,
    Info,
    PreferenceRow,
    RequestRow,
    ShadowRow,
    TraceDetail,
    TraceList,
    TraceQuery,
    TracesQuery,
    TraceSummary,
)
from models.wire.read import content_text

_SUMMARY_COLUMNS = (
    "id", "time", "arm", "arm_forced", "model", "endpoint", "stream", "status", "outcome", "latency_ms",
    "rewriter_ms", "aligner_ms",
)


def last_user_text(messages: Any) -> str | None:
    """The text of the last user message of stored ``messages`` (None when there is none, or no bodies)."""
    if not isinstance(messages, list):
        return None
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return content_text(message.get("content"))
    return None


def _ok() -> sa.ColumnElement[bool]:
    r = schema.requests.c
    return sa.and_(r.status < 400, sa.or_(r.outcome.is_(None), r.outcome.in_(("", "ok"))))


class UiApi:
    """The reads behind ``/ui/api/*`` (one per worker, in ``app.state.ui``)."""

    def __init__(self, settings: Settings, store: Store | None, auth: ApiKeyAuth) -> None:
        self.settings = settings
        self.store = store
        self.auth = auth

    def info(self) -> Info:
        helpers = self.settings.helpers
        configured = {name for name, h in (("rewriter", helpers.rewriter), ("aligner", helpers.aligner)) if h}
        return Info(
            experiment=self.settings.experiment.name,
            arms=[arm.value for arm in ARMS if set(arm.helpers) <= configured],
            models=[b.name for b in self.settings.backends],
            auth=bool(self.settings.server.api_keys),
            store=self.store is not None,
            log_bodies=self.settings.store.log_bodies,
        )

    async def traces(self, query: TracesQuery) -> TraceList:
        r = schema.requests.c
        f = schema.feedback.c
        latest = (
            sa.select(f.rating).where(f.request_id == r.id).order_by(f.time.desc(), f.id.desc()).limit(1)
            .scalar_subquery()
        )
        rated = sa.exists(sa.select(f.id).where(f.request_id == r.id))
        where: list[sa.ColumnElement[bool]] = []
        if query.arm is not None:
            where.append(r.arm == query.arm.value)
        if query.model is not None:
            where.append(r.model == query.model)
        if query.status == "ok":
            where.append(_ok())
        elif query.status == "error":
            where.append(sa.not_(_ok()))
        elif query.status is not None:
            where.append(r.status == query.status)
        if query.rated is not None:
            where.append(rated if query.rated == "yes" else sa.not_(rated))
        if query.before is not None:
            where.append(r.time < query.before)
        rows = await self._query(
            sa.select(*[r[name] for name in _SUMMARY_COLUMNS], r.messages, latest.label("rating"))
            .where(*where)
            .order_by(r.time.desc(), r.id.desc())
            .limit(query.limit + 1)
        )
        page, next_before = _page(rows, query.limit)
        return TraceList(data=[_summary(row) for row in page], next_before=next_before)

    async def trace(self, query: TraceQuery) -> TraceDetail:
        rid = query.id
        r, f, s, p = schema.requests, schema.feedback, schema.shadow_runs, schema.preferences
        found = await self._query(sa.select(r).where(r.c.id == rid))
        if not found:
            raise NotFound(f"No request with id {rid!r} in the trace store.", param="id", code="request_not_found")
        request = {k: v for k, v in found[0].items() if k != "user_key_hash"}
        feedback = await self._query(sa.select(f).where(f.c.request_id == rid).order_by(f.c.time, f.c.id))
        shadow = await self._query(sa.select(s).where(s.c.id == rid))
        preferences = await self._query(
            sa.select(p).where(sa.or_(p.c.request_a == rid, p.c.request_b == rid)).order_by(p.c.time, p.c.id)
        )
        return TraceDetail(
            request=RequestRow.model_validate(request),
            feedback=[FeedbackRow.model_validate(row) for row in feedback],
            shadow=ShadowRow.model_validate(shadow[0]) if shadow else None,
            preferences=[PreferenceRow.model_validate(row) for row in preferences],
        )

    async def experiment(self, query: ExperimentQuery) -> ExperimentAnswer:
        name = self.settings.experiment.name
        if self.store is None:
            raise _disabled()
        selection = Selection(experiment=name, since=query.since, include_forced=False)
        try:
            engine = await self.store.reads_engine()  # the store's pool, not an engine per call
            snapshot = await read_store(
                self.settings.store.url, selection, bodies=True, timeout_s=self.settings.store.timeout_s, engine=engine
            )
        except StoreUnavailable as exc:
            raise StoreUnavailableError("The trace store is unavailable; try again shortly.") from exc
        except UnknownExperiment:  # no request of this experiment yet
            return ExperimentAnswer(experiment=name, since=query.since, report=None)
        except StoreError as exc:
            raise StoreUnavailableError("The trace store cannot be read now; try again shortly.") from exc
        if not snapshot.requests:
            return ExperimentAnswer(experiment=name, since=query.since, report=None)
        # the running gateway's own weights: the sample-ratio-mismatch check runs against them
        configured = ConfiguredExperiment(name, dict(self.settings.experiment.arms))
        report = summarize(snapshot, since=query.since, include_forced=False, configured=configured)
        return ExperimentAnswer(experiment=name, since=query.since, report=report_json(report))

    async def _query(self, statement: Any) -> list[dict[str, Any]]:
        if self.store is None:
            raise _disabled()
        try:
            return await self.store.query(statement)
        except StoreUnavailable as exc:
            raise StoreUnavailableError("The trace store is unavailable; try again shortly.") from exc


def _disabled() -> StoreUnavailableError:
    return StoreUnavailableError("This gateway has the trace store disabled (store.enabled), so it has no traces.")


def _page(rows: Sequence[dict[str, Any]], limit: int) -> tuple[Sequence[dict[str, Any]], float | None]:
    """The rows of one page (of ``limit + 1`` read) and the ``before`` of the next page (None: no more)."""
    if len(rows) <= limit:
        return rows, None
    page = rows[:limit]
    boundary = float(rows[limit]["time"])
    kept = [row for row in page if float(row["time"]) != boundary]  # rows are by time, descending: the tail
    if kept:
        page = kept  # the run of rows at the boundary's time goes to the next page whole
    return page, float(page[-1]["time"])


def _summary(row: dict[str, Any]) -> TraceSummary:
    prompt = last_user_text(row["messages"])
    return TraceSummary(
        **{name: row[name] for name in _SUMMARY_COLUMNS},
        rating=None if row["rating"] is None else int(row["rating"]),
        prompt=None if prompt is None else prompt[:PROMPT_CHARS],
    )
