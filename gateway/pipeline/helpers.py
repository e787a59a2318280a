"""The helpers as the pipeline uses them: timing, metrics and the ``on_error`` policy around each call.

``skip`` serves the uncorrected input and counts the failure in ``aligngate_helper_failures_total``;
``fail`` turns it into a 502 naming the helper. Guards that keep the original (``RewriteResult`` /
``AlignResult`` skip reasons) are not failures; they are counted in ``aligngate_helper_skips_total``.

An aligner with a sentence template corrects sentence by sentence: every segment is counted in
``aligngate_aligner_sentences_total{outcome}`` and every sentence's correction time in
``aligngate_aligner_sentence_seconds``; ``aligngate_helper_duration_seconds`` and ``aligngate_helper_skips_total``
stay per answer. :meth:`Helpers.correct_sentence` is one sentence with the policy applied to it (the streamed
sentence pipeline, ``gateway/pipeline/sentences.py``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from gateway import metrics
from gateway.errors import GatewayError
from models.aligner import Aligner, AlignResult, AlignStream
from models.engine import EngineError
from models.limits import ClientLimits
from models.rewriter import Rewriter
from models.wire.errors import engine_failure

if TYPE_CHECKING:
    from gateway.pipeline.gate import Gate

logger = logging.getLogger(__name__)

OnError = Literal["skip", "fail"]
StreamMode = Literal["buffer", "sentence"]


class HelperFailed(GatewayError):
    status = 502
    type = "upstream_error"
    code = "helper_failed"


@dataclass(slots=True)
class RewriteOutcome:
    messages: list[dict[str, Any]]
    rewritten: str | None
    skipped: str | None
    elapsed_s: float
    #: The helper call's prompt and completion tokens (``None``: no call made: cached, shared, failed, skipped).
    tokens: dict[str, int] | None = None


@dataclass(slots=True)
class AlignOutcome:
    text: str
    corrected: bool
    skipped: str | None
    elapsed_s: float
    #: The aligner's result (``None`` when it failed): segments with a sentence template, tokens, finish.
    result: AlignResult | None = None


@dataclass(slots=True)
class SentenceOutcome:
    """One sentence's correction: ``text`` to serve (the correction, or the sentence when ``skipped`` says why not:
    a guard, or ``failed:<reason>``)."""

    text: str
    skipped: str | None
    elapsed_s: float
    #: The aligner's result on the sentence (``None`` when it failed).
    result: AlignResult | None = None

    @property
    def corrected(self) -> bool:
        return self.skipped is None

    @property
    def failed(self) -> bool:
        return (self.skipped or "").startswith("failed:")


def count_sentences(result: AlignResult) -> None:
    """Count the segments of a sentence-by-sentence correction (``aligngate_aligner_sentences_total``)."""
    for sentence in result.sentences:
        if sentence.skipped in ("code", "no_text"):
            metrics.ALIGNER_SENTENCES.labels("code").inc()
            continue
        metrics.ALIGNER_SENTENCES.labels("corrected" if sentence.corrected else "kept").inc()
        metrics.ALIGNER_SENTENCE_DURATION.observe(sentence.elapsed_ms / 1000)


class Helpers:
    """The configured rewriter and aligner (either may be absent) with their error policies, and the aligner's
    reward gate when configured."""

    def __init__(
        self,
        rewriter: Rewriter | None,
        aligner: Aligner | None,
        *,
        rewriter_on_error: OnError = "skip",
        aligner_on_error: OnError = "skip",
        aligner_stream: StreamMode = "buffer",
        gate: Gate | None = None,
    ) -> None:
        self.rewriter = rewriter
        self.aligner = aligner
        #: The aligner's reward gate (``gateway/pipeline/gate.py``); None: every correction is served.
        self.gate = gate
        self.rewriter_on_error = rewriter_on_error
        self.aligner_on_error = aligner_on_error
        self.aligner_stream = aligner_stream

    @property
    def aligner_max_tokens(self) -> int:
        """The aligner's own bound on a correction's tokens."""
        assert self.aligner is not None
        return self.aligner.sampling.max_tokens

    @property
    def sentence_stream(self) -> bool:
        """Whether streamed answers are corrected sentence by sentence while the backend generates them."""
        return self.aligner is not None and self.aligner.sentence and self.aligner_stream == "sentence"

    def _failed(self, helper: str, policy: OnError, exc: EngineError) -> str:
        reason = engine_failure(exc).reason
        metrics.HELPER_FAILURES.labels(helper, reason).inc()
        logger.warning("%s failed (%s): %s", helper, reason, exc)
        if policy == "fail":  # the exception's text (a server's address, its message) stays in the log
            raise HelperFailed(f"The {helper} failed ({reason}).") from exc
        return f"failed:{reason}"

    async def rewrite(self, messages: Sequence[Mapping[str, Any]]) -> RewriteOutcome:
        assert self.rewriter is not None
        start = time.perf_counter()
        try:
            result = await self.rewriter.rewrite(messages)
        except EngineError as exc:
            skipped = self._failed("rewriter", self.rewriter_on_error, exc)
            return RewriteOutcome([dict(m) for m in messages], None, skipped, time.perf_counter() - start)
        elapsed = time.perf_counter() - start
        if not result.cached:
            metrics.HELPER_DURATION.labels("rewriter").observe(elapsed)
        if result.skipped_reason is not None:
            metrics.HELPER_SKIPS.labels("rewriter", result.skipped_reason).inc()
        spent = (result.helper_prompt_tokens, result.helper_completion_tokens)
        tokens = {"prompt_tokens": spent[0], "completion_tokens": spent[1]} if any(spent) else None
        return RewriteOutcome(result.messages, result.rewritten, result.skipped_reason, elapsed, tokens)

    async def correct(
        self, question: str, answer: str, limits: ClientLimits | None = None, *, answer_cut: bool = False
    ) -> AlignOutcome:
        assert self.aligner is not None
        start = time.perf_counter()
        try:
            result = await self.aligner.correct(question, answer, limits, answer_cut=answer_cut)
        except EngineError as exc:
            skipped = self._failed("aligner", self.aligner_on_error, exc)
            return AlignOutcome(answer, False, skipped, time.perf_counter() - start)
        elapsed = time.perf_counter() - start
        metrics.HELPER_DURATION.labels("aligner").observe(elapsed)
        if result.skipped_reason is not None:
            metrics.HELPER_SKIPS.labels("aligner", result.skipped_reason).inc()
        count_sentences(result)
        return AlignOutcome(result.corrected, result.skipped_reason is None, result.skipped_reason, elapsed, result)

    async def correct_sentence(
        self, question: str, prefix: str, sentence: str, *, max_tokens: int | None = None
    ) -> SentenceOutcome:
        """One sentence (without the whitespace around it) after ``prefix`` (the answer so far, as served), with
        the policy applied: ``skip`` keeps the sentence (``failed:<reason>``), ``fail`` raises ``HelperFailed``.
        Counts the sentence; the per-answer metrics are the caller's (:meth:`answer_corrected`)."""
        assert self.aligner is not None
        start = time.perf_counter()
        try:
            result = await self.aligner.correct_sentence(question, prefix, sentence, max_tokens=max_tokens)
        except EngineError as exc:
            metrics.ALIGNER_SENTENCES.labels("failed").inc()
            skipped = self._failed("aligner", self.aligner_on_error, exc)
            return SentenceOutcome(sentence, skipped, time.perf_counter() - start)
        elapsed = time.perf_counter() - start
        metrics.ALIGNER_SENTENCE_DURATION.observe(elapsed)
        metrics.ALIGNER_SENTENCES.labels("kept" if result.skipped_reason else "corrected").inc()
        return SentenceOutcome(result.corrected, result.skipped_reason, elapsed, result)

    @staticmethod
    def passed_sentences(outcome: Literal["code", "uncorrected"], n: int = 1) -> None:
        """Count segments that went out without the aligner: ``code`` (code, no words), ``uncorrected`` (after a
        failure earlier in the answer)."""
        if n:
            metrics.ALIGNER_SENTENCES.labels(outcome).inc(n)

    @staticmethod
    def answer_corrected(elapsed_s: float, skipped: str | None) -> None:
        """The per-answer metrics of an answer corrected sentence by sentence: the aligner's time on it, and the
        guard that kept all of it (a failure is counted where it happened)."""
        metrics.HELPER_DURATION.labels("aligner").observe(elapsed_s)
        if skipped is not None and not skipped.startswith("failed:"):
            metrics.HELPER_SKIPS.labels("aligner", skipped).inc()

    def stream_correct(self, question: str, answer: str, limits: ClientLimits | None = None) -> CorrectionStream:
        assert self.aligner is not None
        return CorrectionStream(self, self.aligner.stream_correct(question, answer, limits), answer)


class CorrectionStream:
    """A streamed correction with the ``on_error`` policy applied.

    ``first()`` waits for the first delta: a failure there follows the policy (``skip``: the original answer
    becomes the whole stream; ``fail``: ``HelperFailed``). A failure after text went out raises
    ``HelperFailed`` from ``rest()`` whatever the policy (what was sent cannot be taken back).
    """

    def __init__(self, helpers: Helpers, stream: AlignStream, answer: str) -> None:
        self._helpers = helpers
        self._stream = stream
        self._answer = answer
        self._start = time.perf_counter()
        self.waited_s = 0.0
        self.skipped: str | None = None
        self.fell_back = False
        #: The aligner's result once the stream has ended (None after a fallback).
        self.result: AlignResult | None = None

    async def first(self) -> str:
        t = time.perf_counter()
        try:
            return await anext(self._stream)
        except StopAsyncIteration:
            return ""
        except EngineError as exc:
            self.skipped = self._helpers._failed("aligner", self._helpers.aligner_on_error, exc)
            self.fell_back = True
            return self._answer
        finally:
            self.waited_s += time.perf_counter() - t

    async def rest(self) -> AsyncIterator[str]:
        if self.fell_back:
            return
        try:
            while True:
                t = time.perf_counter()
                try:
                    delta = await anext(self._stream)
                except StopAsyncIteration:
                    break
                finally:
                    self.waited_s += time.perf_counter() - t
                yield delta
        except EngineError as exc:
            reason = engine_failure(exc).reason
            metrics.HELPER_FAILURES.labels("aligner", reason).inc()
            logger.warning("aligner failed mid-stream (%s): %s", reason, exc)
            raise HelperFailed(f"The aligner failed mid-stream ({reason}).") from exc
        result = self._stream.result
        metrics.HELPER_DURATION.labels("aligner").observe(time.perf_counter() - self._start)
        if result is not None and result.skipped_reason is not None:
            self.skipped = result.skipped_reason
            metrics.HELPER_SKIPS.labels("aligner", result.skipped_reason).inc()
        if result is not None:
            count_sentences(result)
        self.result = result

    async def aclose(self) -> None:
        await self._stream.aclose()
