"""The aligner's reward gate (``helpers.aligner.gate``): best of two, the backend's answer or its correction.

A reward model scores both — each a finished assistant turn to the user's own messages (read before any rewrite;
a completions prompt is one user message) — and the correction is served only when its score beats the raw
answer's by more than ``margin``; a tie or a loss keeps the raw answer (the aligner's skip reason
``gate_kept_raw``, counted in ``aligngate_helper_skips_total`` like the guards). Only corrections are gated: a
choice the aligner left unchanged (a guard, a failure, tool calls) is served as it is, unscored.

Every text choice of a request is scored in one call, and the scorer (``models.scorer``) batches concurrent
requests' pairs into one forward pass on its own worker thread: the event loop never waits on torch.

A failure (the model raised, or no scores within ``timeout_s``: queue and forward pass) follows the aligner's
``on_error``: ``skip`` serves the raw answer — the safe choice: an ungated correction is what the gate was
configured to check — with the skip reason ``failed:gate_<reason>`` (``timeout``, ``error``); ``fail`` answers
502. Failures count in ``aligngate_helper_failures_total{helper="gate"}``; every decision in
``aligngate_gate_decisions_total{helper="aligner", decision}`` (``corrected``, ``raw``, ``failed``).

:meth:`Gate.scores` is the scoring alone (no policy, no metrics), for shadow mode, which keeps its own.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from typing import Any, Literal, Protocol

from gateway import metrics
from gateway.pipeline.helpers import HelperFailed
from gateway.pipeline.trace import GateTrace
from models.scorer import ScoreItem, scoring_messages

__all__ = ["KEPT_RAW", "Gate", "GateVerdict", "Scorer", "decide", "failure_reason"]

logger = logging.getLogger(__name__)

#: The aligner's skip reason when the gate kept the raw answer.
KEPT_RAW = "gate_kept_raw"


class Scorer(Protocol):
    """What the gate scores with (``models.scorer.RewardScorer``, or a scripted one in tests)."""

    async def score(self, items: Sequence[ScoreItem]) -> list[float]: ...


class GateVerdict(GateTrace):
    """One choice's gate (its trace: both scores, None after a failure, and what was served), and ``failed``:
    ``failed:gate_<reason>`` (in the trace as the aligner's skip reason, not in ``gate``)."""

    failed: str | None = None

    @property
    def skipped(self) -> str | None:
        """The aligner's skip reason this verdict gives the choice (None: the correction is served)."""
        if self.failed is not None:
            return self.failed
        return KEPT_RAW if self.decision == "raw" else None


def failure_reason(exc: BaseException) -> str:
    """The gate's failure reason: ``timeout`` (no scores within ``timeout_s``) or ``error``."""
    return "timeout" if isinstance(exc, TimeoutError) else "error"


def decide(raw: float, corrected: float, margin: float) -> Literal["corrected", "raw"]:
    """``corrected`` only when the correction's score beats the raw answer's by more than ``margin``."""
    return "corrected" if corrected - raw > margin else "raw"


class Gate:
    """The reward gate of the aligner's corrections, with the aligner's ``on_error`` policy."""

    def __init__(
        self, scorer: Scorer, *, margin: float = 0.0, timeout_s: float = 10.0,
        on_error: Literal["skip", "fail"] = "skip",
    ) -> None:
        self.scorer = scorer
        self.margin = margin
        self.timeout_s = timeout_s
        self.on_error = on_error

    async def scores(
        self, messages: Sequence[Mapping[str, Any]], pairs: Sequence[tuple[str, str]]
    ) -> list[tuple[float, float]]:
        """``(raw score, corrected score)`` of each ``(raw, corrected)`` pair (raises on a failure or timeout)."""
        prompt = scoring_messages(messages)
        items: list[ScoreItem] = [(prompt, text) for pair in pairs for text in pair]
        scores = await asyncio.wait_for(self.scorer.score(items), self.timeout_s)
        return [(scores[2 * i], scores[2 * i + 1]) for i in range(len(pairs))]

    async def judge(
        self, messages: Sequence[Mapping[str, Any]], pairs: Sequence[tuple[str, str]]
    ) -> list[GateVerdict]:
        """The verdict on each ``(raw, corrected)`` pair, the policy applied and counted (``fail``:
        ``HelperFailed``)."""
        if not pairs:
            return []
        try:
            scored = await self.scores(messages, pairs)
        except Exception as exc:  # TimeoutError included
            reason = failure_reason(exc)
            metrics.HELPER_FAILURES.labels("gate", reason).inc()
            metrics.GATE_DECISIONS.labels("aligner", "failed").inc(len(pairs))
            logger.warning("the aligner's gate failed (%s): %r", reason, exc)
            if self.on_error == "fail":
                raise HelperFailed(f"The aligner's gate failed ({reason}).") from exc
            return [GateVerdict(decision="raw", failed=f"failed:gate_{reason}") for _ in pairs]
        verdicts = []
        for raw, corrected in scored:
            decision = decide(raw, corrected, self.margin)
            metrics.GATE_DECISIONS.labels("aligner", decision).inc()
            if decision == "raw":
                metrics.HELPER_SKIPS.labels("aligner", KEPT_RAW).inc()
            verdicts.append(GateVerdict(raw=round(raw, 6), corrected=round(corrected, 6), decision=decision))
        return verdicts
