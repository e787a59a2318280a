"""Probe each configured helper once at start: does it do its job with its template, or must the operator act?

A helper and a template that do not fit fail quietly: the published ``bpo`` completions template sent to a
generic chat model gets zero tokens back, so the ``rewrite`` arm silently equals ``control`` plus latency; a
small chat model asked to rewrite answers the question instead. The probe finds this before traffic does.

* the **rewriter** is asked to rewrite :data:`REWRITE_PROBE` (a plain question). ``ok`` when its guards accept
  the rewrite; else ``warning`` with the guard's reason (``empty``, ``answered``, ``template_leak``, …) and a
  hint naming what to try (the other template kind, a rewriter trained for the job, or leaving the ``rewrite``
  arm's weight at 0); ``failed`` when the call itself failed (timeout, unreachable, overloaded).
* the **aligner** is asked to correct :data:`ALIGN_PROBE`'s right answer. ``ok`` when its guards accept the
  correction (a good corrector leaves a right answer alone or nearly); ``warning`` with the reason and a hint
  otherwise; ``failed`` when the call failed.

The probe calls the helper objects directly (not :class:`~gateway.pipeline.helpers.Helpers`), so it counts in no
request metric; each result is logged once (a warning when not ``ok``) and shown by ``/readyz`` under
``helpers`` (``pending`` until it has run). Readiness itself does not depend on it: a misfit helper is
skipped by its guards, it does not stop answers. ``helpers.probe: false`` turns it off. With ``--workers N``
each worker probes its own helpers once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Literal

from models.aligner import Aligner
from models.engine import EngineError
from models.rewriter import Rewriter
from models.templates import TEMPLATES
from models.wire.errors import engine_failure

__all__ = ["ALIGN_PROBE", "REWRITE_PROBE", "HelperProbes", "ProbeResult", "probe_aligner", "probe_rewriter"]

logger = logging.getLogger(__name__)

ProbeStatus = Literal["pending", "ok", "warning", "failed"]

#: The rewriter's probe: a plain question, which a rewrite must keep a question (or a request).
REWRITE_PROBE = "What is the capital of France?"
#: The aligner's probe: a question and its right answer, which a correction must keep.
ALIGN_PROBE = ("What is the capital of France?", "The capital of France is Paris.")
#: Longest piece of a probe's output kept for /readyz and the log.
_SHOWN = 200


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """One helper's probe: ``status``, the guard or failure ``reason``, a ``hint`` for the operator, what the
    helper answered (``output``, cut at 200 characters) and how long it took."""

    helper: str
    template: str
    status: ProbeStatus
    reason: str | None = None
    hint: str | None = None
    output: str | None = None
    ms: float | None = None


def _other_template(helper: str, template: str) -> str | None:
    """The template of the other kind (chat ↔ completion) for the same helper and granularity, if one exists."""
    current = TEMPLATES[template]
    for name, t in TEMPLATES.items():
        if t.helper == helper and t.kind != current.kind and t.sentence == current.sentence:
            return name
    return None


def _hint(helper: str, template: str, reason: str) -> str:
    kind = TEMPLATES[template].kind
    other = _other_template(helper, template)
    if reason in ("empty", "no_answer"):
        if other is not None:
            return (
                f"the {helper} returned nothing with the {kind} template {template!r}: a {kind} template sent to a "
                f"model of the other kind often gets no tokens; try template {other!r}"
            )
        return f"the {helper} returned nothing with template {template!r}"
    if reason == "truncated":
        return (
            f"the {helper}'s output was cut off: raise helpers.{helper}.max_tokens, or use a model trained for the job"
        )
    if helper == "rewriter" and reason == "answered":
        return (
            "the rewriter answered the question instead of rewriting it: this model is not a prompt optimizer; "
            "use one trained for it (a BPO checkpoint with template 'bpo', or one trained with `aligngate train sft`) "
            "or keep the rewrite arm's weight at 0"
        )
    if reason == "template_leak":
        return f"the {helper} leaked its template's markers: the model does not follow template {template!r}"
    return f"the {helper}'s guard rejected its output ({reason}); its arm will mostly serve the unchanged text"


async def probe_rewriter(rewriter: Rewriter) -> ProbeResult:
    template = rewriter.template.name
    start = time.perf_counter()
    try:
        result = await rewriter.rewrite([{"role": "user", "content": REWRITE_PROBE}])
    except EngineError as exc:
        return ProbeResult("rewriter", template, "failed", reason=engine_failure(exc).reason,
                           hint="the rewriter could not be reached or did not answer in time",
                           ms=_ms(start))
    if result.skipped_reason is None:
        return ProbeResult("rewriter", template, "ok", output=_cut(result.rewritten), ms=_ms(start))
    return ProbeResult(
        "rewriter", template, "warning", reason=result.skipped_reason,
        hint=_hint("rewriter", template, result.skipped_reason), ms=_ms(start),
    )


async def probe_aligner(aligner: Aligner) -> ProbeResult:
    template = aligner.template.name
    start = time.perf_counter()
    question, answer = ALIGN_PROBE
    try:
        result = await aligner.correct(question, answer)
    except EngineError as exc:
        return ProbeResult("aligner", template, "failed", reason=engine_failure(exc).reason,
                           hint="the aligner could not be reached or did not answer in time", ms=_ms(start))
    if result.skipped_reason is None:
        return ProbeResult("aligner", template, "ok", output=_cut(result.corrected), ms=_ms(start))
    return ProbeResult(
        "aligner", template, "warning", reason=result.skipped_reason,
        hint=_hint("aligner", template, result.skipped_reason), ms=_ms(start),
    )


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 1)


def _cut(text: str | None) -> str | None:
    return None if text is None else text[:_SHOWN]


class HelperProbes:
    """The probes of one worker's helpers, run once in the background; :meth:`results` for ``/readyz``."""

    def __init__(self, rewriter: Rewriter | None, aligner: Aligner | None) -> None:
        self._rewriter = rewriter
        self._aligner = aligner
        self._results: dict[str, ProbeResult] = {}
        if rewriter is not None:
            self._results["rewriter"] = ProbeResult("rewriter", rewriter.template.name, "pending")
        if aligner is not None:
            self._results["aligner"] = ProbeResult("aligner", aligner.template.name, "pending")
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._results and self._task is None:
            self._task = asyncio.create_task(self._run(), name="aligngate-helper-probe")

    async def close(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def results(self) -> dict[str, ProbeResult]:
        return dict(self._results)

    async def _run(self) -> None:
        jobs = []
        if self._rewriter is not None:
            jobs.append(probe_rewriter(self._rewriter))
        if self._aligner is not None:
            jobs.append(probe_aligner(self._aligner))
        for result in await asyncio.gather(*jobs):
            self._results[result.helper] = result
            if result.status == "ok":
                logger.info("helper probe: %s ok with template %r (%.0f ms)", result.helper, result.template,
                            result.ms or 0.0)
            else:
                logger.warning("helper probe: %s %s with template %r (%s): %s", result.helper, result.status,
                               result.template, result.reason, result.hint)
