"""Shadow mode: for a sampled share of the control traffic, run the helpers in the background after the
response has been sent, and store what they made without changing the response. A safe way to try new helpers
on real traffic before giving an arm any weight.

* **Which requests.** Only requests *assigned* to ``control`` (no ``X-Aligngate-Arm``: a forced arm is someone
  testing, not the experiment's traffic), and of those a share ``experiment.shadow.share``, decided by the
  request id alone (SHA-256 → a number in [0, 1) below the share), so a decision is reproducible and every
  worker agrees on it. The inference service asks :meth:`ShadowRunner.sampled` and, for a sampled request,
  makes the runner the sink of its ``Capture`` (:meth:`ShadowRunner.attach`). Nothing else on the request path
  changes: the response is the same bytes with and without shadow mode.
* **When.** The middleware hands a finished request to its capture's sink once the response has ended (the
  last byte was sent, the status and any stream failure are known). The runner records the request in the
  trace store as usual and then starts the shadow run as a background task on the worker's event loop: an
  O(1) ``create_task``, so it can never delay, change or fail the client's response. A request that failed
  (status ≥ 400, a broken stream, a client that went away) gets no shadow run.
* **What runs.** ``experiment.shadow.arm`` names the helpers: ``rewrite`` runs the rewriter on the user's
  messages, ``align`` runs the aligner on (the user's question, the backend's answer as the client got it,
  choice 0), ``rewrite+align`` both, concurrently. The backend is *not* called again with the rewritten prompt:
  a shadow rewrite stores the rewrite only, and a shadow correction corrects the answer the user actually got.
  The answer comes from what the capture already holds for the store (the relayed body, or the relayed SSE
  events, which a sampled stream keeps in full even with ``store.log_bodies`` off) and is parsed in the
  background task, once; unsampled requests pay nothing for it. With the aligner's reward gate
  (``helpers.aligner.gate``) a shadow correction is scored against the answer too, as a live one would be: the
  scores and decision go into the row (``gate_*``), and a correction the gate would not have served is stored as
  not accepted (``aligner_skipped: gate_kept_raw``, no ``corrected``).
* **Bounded.** At most ``experiment.shadow.max_concurrent`` runs are in flight per worker; a sampled request
  beyond that is skipped, not queued (``skipped: saturated``). The helpers are the live ones (a shadow rewrite
  also fills the rewriter's cache), so shadow runs compete with live traffic for them: size the share to their
  spare capacity.
* **Failures.** A helper failure never surfaces anywhere but the store row (``failed:<reason>``), a warning in
  the log and the shadow's own metrics (``aligngate_shadow_runs_total{outcome}``,
  ``aligngate_shadow_helper_*``); the live helper metrics and ``on_error`` policies are left alone, so they
  keep describing what clients were served.
* **Stored** as one ``shadow_runs`` row per sampled request (``records.shadow_row``), keyed by the request
  id and written through the store's queue (batched, spilled and replayed like every record; insert-or-ignore
  by id, so a replay duplicates nothing).
* **Shutdown** (:meth:`ShadowRunner.close`, before the store closes): new runs are skipped (``shutdown``),
  runs in flight get a few seconds to finish, then are cancelled and recorded as ``cancelled``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from gateway import metrics
from gateway.config import ShadowSettings
from gateway.context import Capture, RequestContext
from gateway.pipeline.gate import KEPT_RAW, decide, failure_reason
from gateway.pipeline.helpers import Helpers
from gateway.store.records import relayed_answer, request_data, shadow_row
from models.aligner import AlignResult, question_from_messages
from models.engine import EngineError
from models.rewriter import RewriteResult
from models.wire.errors import engine_failure

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: How long shutdown waits for shadow runs in flight before it cancels them (seconds).
CLOSE_WAIT_S = 5.0


class ShadowStore(Protocol):
    """Where shadowed requests and their shadow runs are recorded (the trace store): O(1), never raise."""

    def submit(self, ctx: RequestContext, status: int, duration_s: float, overhead_s: float) -> None: ...

    def submit_shadow(self, row: dict[str, Any]) -> None: ...


@dataclass(slots=True)
class ShadowJob:
    """What a sampled request's shadow run needs besides its capture: the client's body, the endpoint."""

    request_body: bytes
    chat: bool
    #: Its ``shadow_runs`` row has been submitted.
    recorded: bool = False


def sample_point(request_id: str) -> float:
    """The request's place in [0, 1): sampled when below the share (the same on every worker and every run)."""
    digest = hashlib.sha256(b"aligngate-shadow\x00" + request_id.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


class ShadowRunner:
    """Samples, starts, bounds and records the shadow runs of one worker process (see the module docstring)."""

    def __init__(self, settings: ShadowSettings, helpers: Helpers, store: ShadowStore, *, experiment: str) -> None:
        self.share = settings.share
        self.arm = settings.arm
        self.max_concurrent = settings.max_concurrent
        self.experiment = experiment
        self.helpers = helpers
        self.store = store
        self.rewrites = settings.arm.rewrites
        self.aligns = settings.arm.aligns
        if (self.rewrites and helpers.rewriter is None) or (self.aligns and helpers.aligner is None):
            raise ValueError(f"shadow arm {settings.arm.value!r} needs helpers that are not configured")
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False

    # ------------------------------------------------------------------ the request path

    def sampled(self, request_id: str) -> bool:
        """Whether the assigned-control request ``request_id`` is shadow-run."""
        share = self.share
        if share >= 1.0:
            return True
        return share > 0.0 and sample_point(request_id) < share

    def attach(self, capture: Capture, request_body: bytes, chat: bool) -> None:
        """Make ``capture``'s request a shadow one: its run starts when it is recorded (``submit``)."""
        capture.shadow = ShadowJob(request_body, chat)
        capture.sink = self

    def submit(self, ctx: RequestContext, status: int, duration_s: float, overhead_s: float) -> None:
        """The sink of a sampled request (called by the middleware once its response has ended): record it,
        then start its shadow run. O(1); never raises."""
        self.store.submit(ctx, status, duration_s, overhead_s)
        try:
            self._launch(ctx, status)
        except Exception:
            logger.exception("shadow run of request %s could not start", ctx.request_id)

    def _launch(self, ctx: RequestContext, status: int) -> None:
        cap = ctx.capture
        job = cap.shadow if cap is not None else None
        if cap is None or not isinstance(job, ShadowJob):
            return
        if status >= 400 or ctx.outcome is not None:
            metrics.SHADOW_RUNS.labels("request_failed").inc()
            return
        if self._closing:
            self._skipped(ctx.request_id, cap, "shutdown")
            return
        if len(self._tasks) >= self.max_concurrent:
            self._skipped(ctx.request_id, cap, "saturated")
            return
        metrics.SHADOW_IN_FLIGHT.inc()
        rid = ctx.request_id
        task = asyncio.get_running_loop().create_task(self._run(rid, cap, job), name="aligngate-shadow")
        self._tasks.add(task)
        task.add_done_callback(lambda t: self._ended(t, rid, cap, job))

    def _ended(self, task: asyncio.Task[None], request_id: str, cap: Capture, job: ShadowJob) -> None:
        self._tasks.discard(task)
        metrics.SHADOW_IN_FLIGHT.dec()
        if not job.recorded:  # cancelled before it ever ran: ``_run`` had no chance to record it
            self._skipped(request_id, cap, "cancelled")

    def _skipped(self, request_id: str, cap: Capture, reason: str) -> None:
        metrics.SHADOW_RUNS.labels(reason).inc()
        self._record(shadow_row(request_id, self.experiment, self.arm, time.time(), bodies=cap.bodies,
                                skipped=reason))

    def _record(self, row: dict[str, Any]) -> None:
        try:
            self.store.submit_shadow(row)
        except Exception:
            logger.exception("shadow run of request %s could not be recorded", row.get("id"))

    # ------------------------------------------------------------------ lifecycle

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    async def wait_idle(self, timeout_s: float | None = None) -> None:
        """Return once no shadow run is in flight (runs started meanwhile included)."""
        async with asyncio.timeout(timeout_s):
            while self._tasks:
                await asyncio.wait(list(self._tasks))

    async def close(self, timeout_s: float = CLOSE_WAIT_S) -> None:
        """Stop starting runs; give those in flight ``timeout_s`` to finish, then cancel them (each cancelled
        run is recorded as ``cancelled``). Returns once none is left; never raises."""
        self._closing = True
        if not self._tasks:
            return
        _, pending = await asyncio.wait(list(self._tasks), timeout=timeout_s)
        if not pending:
            return
        logger.warning("shadow mode: cancelling %d shadow runs still in flight at shutdown", len(pending))
        for task in pending:
            task.cancel()
        _, stuck = await asyncio.wait(pending, timeout=max(timeout_s, 1.0))
        if stuck:
            logger.warning("shadow mode: %d shadow runs did not stop when cancelled", len(stuck))

    # ------------------------------------------------------------------ the background run

    async def _run(self, request_id: str, cap: Capture, job: ShadowJob) -> None:
        fields: dict[str, Any] = {}
        outcome = "completed"
        try:
            fields = await self._helpers_on(cap, job)
            failed = any(str(fields.get(k) or "").startswith("failed:") for k in ("rewriter_skipped",
                                                                                   "aligner_skipped"))
            outcome = "helper_failed" if failed else "completed"
        except asyncio.CancelledError:
            outcome = "cancelled"
            fields = {"skipped": "cancelled"}
            raise
        except Exception:  # a bug must cost one shadow run, never a client anything
            logger.exception("shadow run of request %s failed", request_id)
            outcome = "helper_failed"
            fields = {"rewriter_skipped": "failed:error" if self.rewrites else None,
                      "aligner_skipped": "failed:error" if self.aligns else None}
        finally:
            job.recorded = True
            metrics.SHADOW_RUNS.labels(outcome).inc()
            self._record(shadow_row(request_id, self.experiment, self.arm, time.time(), bodies=cap.bodies,
                                    **fields))

    async def _helpers_on(self, cap: Capture, job: ShadowJob) -> dict[str, Any]:
        """Run the shadow arm's helpers (concurrently) on the request and the answer it got; the row's fields."""
        data = request_data(job.request_body) or {}
        messages: list[dict[str, Any]] | None  # what the rewriter reads (None: nothing it can read)
        if job.chat:
            given = data.get("messages")
            messages = [m for m in given if isinstance(m, dict)] if isinstance(given, list) else []
            question = question_from_messages(messages)
        else:  # as the pipeline does: a single string prompt is the user's turn and the aligner's question
            prompt = data.get("prompt")
            messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else None
            question = prompt if isinstance(prompt, str) else ""
        parts: list[Awaitable[dict[str, Any]]] = []
        if self.rewrites:
            parts.append(self._rewrite(messages))
        if self.aligns:
            parts.append(self._align(question, relayed_answer(cap), messages or []))
        fields: dict[str, Any] = {}
        for part in await asyncio.gather(*parts):
            fields.update(part)
        return fields

    async def _rewrite(self, messages: list[dict[str, Any]] | None) -> dict[str, Any]:
        if messages is None:  # completions with a list of prompts or token ids: nothing the rewriter can read
            return {"rewriter_skipped": "unsupported_prompt"}
        rewriter = self.helpers.rewriter
        assert rewriter is not None
        result, elapsed, failed = await self._call("rewriter", rewriter.rewrite(messages))
        fields: dict[str, Any] = {"rewriter_ms": round(elapsed * 1000, 3)}
        if not isinstance(result, RewriteResult):
            fields["rewriter_skipped"] = failed
            return fields
        if not result.cached:
            metrics.SHADOW_HELPER_DURATION.labels("rewriter").observe(elapsed)
        if result.skipped_reason is not None:
            metrics.SHADOW_HELPER_SKIPS.labels("rewriter", result.skipped_reason).inc()
        fields["rewritten_prompt"] = result.rewritten
        fields["rewriter_skipped"] = result.skipped_reason
        return fields

    async def _align(self, question: str, answer: str | None, messages: list[dict[str, Any]]) -> dict[str, Any]:
        if answer is None:  # tool calls or non-text content: nothing the aligner can correct
            return {"aligner_skipped": "no_answer"}
        aligner = self.helpers.aligner
        assert aligner is not None
        result, elapsed, failed = await self._call("aligner", aligner.correct(question, answer))
        fields: dict[str, Any] = {"aligner_ms": round(elapsed * 1000, 3)}
        if not isinstance(result, AlignResult):
            fields["aligner_skipped"] = failed
            return fields
        metrics.SHADOW_HELPER_DURATION.labels("aligner").observe(elapsed)
        if result.skipped_reason is not None:
            metrics.SHADOW_HELPER_SKIPS.labels("aligner", result.skipped_reason).inc()
        else:
            fields["corrected"] = result.corrected
        fields["aligner_skipped"] = result.skipped_reason
        if result.skipped_reason is None and self.helpers.gate is not None:
            fields.update(await self._gate(messages, answer, result.corrected))
        return fields

    async def _gate(self, messages: list[dict[str, Any]], answer: str, corrected: str) -> dict[str, Any]:
        """The aligner's reward gate on the shadow correction: the scores, and what a live request would have
        served (``gate_kept_raw``: the correction is not stored as accepted)."""
        gate = self.helpers.gate
        assert gate is not None
        try:
            [(raw, better)] = await gate.scores(messages, [(answer, corrected)])
        except Exception as exc:  # TimeoutError included: never the client's problem
            reason = failure_reason(exc)
            metrics.SHADOW_HELPER_FAILURES.labels("gate", reason).inc()
            logger.warning("shadow gate failed (%s): %r", reason, exc)
            return {"aligner_skipped": f"failed:gate_{reason}", "corrected": None}
        fields: dict[str, Any] = {"gate_raw_score": round(raw, 6), "gate_corrected_score": round(better, 6),
                                  "gate_decision": decide(raw, better, gate.margin)}
        if fields["gate_decision"] == "raw":
            metrics.SHADOW_HELPER_SKIPS.labels("aligner", KEPT_RAW).inc()
            fields.update(aligner_skipped=KEPT_RAW, corrected=None)
        return fields

    @staticmethod
    async def _call(helper: str, call: Awaitable[T]) -> tuple[T | None, float, str | None]:
        """``call``'s result (None on failure), its duration, and ``failed:<reason>`` when it failed."""
        start = time.perf_counter()
        try:
            result = await call
        except EngineError as exc:
            reason = engine_failure(exc).reason
            logger.warning("shadow %s failed (%s): %s", helper, reason, exc)
        except Exception:  # anything else an engine raises: still never the client's problem
            reason = "error"
            logger.exception("shadow %s failed", helper)
        else:
            return result, time.perf_counter() - start, None
        metrics.SHADOW_HELPER_FAILURES.labels(helper, reason).inc()
        return None, time.perf_counter() - start, f"failed:{reason}"
