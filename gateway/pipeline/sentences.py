"""A streamed answer corrected sentence by sentence while the backend is still generating it (``stream: sentence``).

The backend's answer is streamed. Each choice's text is cut into sentences as it arrives (``models.sentences``);
each sentence is corrected with the question and the text already served before it (the corrected prefix) as
context, and goes to the client as soon as its correction is done while the backend goes on generating: the
aligner works on sentence k while the backend writes sentence k+1. Within a choice the corrections run one after
the other (each needs the corrected prefix); the choices of ``n`` > 1 run side by side. Fenced code and pieces
without words go out as the backend wrote them; tool-call deltas are passed through as the backend sent them, in
their place in the choice. A choice's first event (its role chunk) goes out with its first text, so the time to
the first byte is the time to the first corrected sentence.

Per sentence, a guard (an empty or cut-off correction) keeps the sentence as the backend wrote it; with the
aligner's reward gate (``gateway/pipeline/gate.py``) each correction is scored before it is sent: the answer so
far ending in the backend's sentence against it ending in the correction, as finished turns to the user's
messages; a tie or a loss keeps the sentence (``gate_kept_raw``; a gate failure follows ``on_error`` like the
aligner's). The verdicts are in the trace per sentence (``sentences[].gate``). The aligner
failing on a sentence follows ``on_error``: ``skip`` keeps that sentence and sends the rest of that choice as the
backend writes it, without asking the aligner again (a failing aligner would otherwise cost every later sentence
its timeout); ``fail`` ends the stream with an error frame and ``[DONE]``. The backend failing mid-answer ends the
stream the same way once the sentences it had completed are corrected and sent (the unfinished one is dropped).

Three kinds of task share the work, joined by queues: the reader reads the backend's SSE stream and feeds each
choice's splitter, queueing its segments and passed-through deltas; one corrector per choice takes them in order
and puts the events to send on the output queue; the response's event generator (:meth:`SentenceStream.events`)
sends them, and is the only one to end the stream. Closing that generator (the client went away, a failure)
cancels the reader and the correctors: the backend request is dropped and aligner calls in flight are cancelled.
The time the generator waits for its next event is the request's waiting time (``waited_s``, tracked by the
request context): it waits on the backend or the aligner.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.context import RequestContext
from gateway.errors import GatewayError, UpstreamBroken, error_frame
from gateway.pipeline.gate import GateVerdict
from gateway.pipeline.helpers import HelperFailed, Helpers
from gateway.pipeline.trace import SentenceTrace, Trace
from gateway.pipeline.usage import add_aligner_tokens, delivered_usage
from gateway.upstream.protocol import StreamHandle
from models.aligner import AlignResult, SentenceResult, sentence_skip
from models.limits import Budget, ClientLimits
from models.sentences import Segment, SentenceSplitter
from models.wire.chunks import ChunkWriter
from models.wire.read import chunk_choices, stream_error, usage_counts
from models.wire.sse import DONE, Event, EventDecoder

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _End:
    """A choice's last item: its finish reason."""

    reason: Any


class _Abort:
    """The backend failed: what is queued before this goes out, the unfinished text does not."""


_ABORT = _Abort()
#: What a choice's queue carries: a segment to correct or pass, an event passed through (tool calls), the end.
_Item = Segment | bytes | _End | _Abort


@dataclass(frozen=True, slots=True)
class _ChoiceDone:
    index: int


@dataclass(frozen=True, slots=True)
class _ReaderDone:
    error: GatewayError | None


#: What the output queue carries: events to send, a choice that has ended, the reader that has, a failure.
_Out = bytes | _ChoiceDone | _ReaderDone | GatewayError


@dataclass(eq=False)
class _Choice:
    """One choice of the answer while it streams."""

    index: int
    splitter: SentenceSplitter
    queue: asyncio.Queue[_Item] = field(default_factory=asyncio.Queue)
    raw: list[str] = field(default_factory=list)
    served: list[str] = field(default_factory=list)
    sentences: list[SentenceTrace] = field(default_factory=list)
    #: What the aligner did on each segment, for the delivered ``usage``.
    results: list[SentenceResult] = field(default_factory=list)
    budget: Budget = field(default_factory=Budget)
    aligner_s: float = 0.0
    #: ``failed:<reason>`` once the aligner has failed on this choice (the rest goes out uncorrected).
    failed: str | None = None
    tools: bool = False
    ended: bool = False
    opened: bool = False
    task: asyncio.Task[None] | None = None

    def skipped(self) -> str | None:
        """Why the choice as a whole is uncorrected (``None``: at least one sentence was corrected)."""
        if any(s.skipped is None for s in self.sentences):
            return None
        if self.failed is not None:
            return self.failed
        reasons = [s.skipped for s in self.sentences if s.skipped not in ("code", "no_text")]
        if reasons:
            return reasons[0]
        return "tool_calls" if self.tools and not self.raw else "no_answer"


class SentenceStream:
    """The events of one streamed answer corrected sentence by sentence (see the module docstring)."""

    def __init__(
        self, ctx: RequestContext, helpers: Helpers, upstream: StreamHandle, *, question: str, chat: bool,
        include_usage: bool, trace: Trace, trace_on: bool, limits: ClientLimits | None = None,
        messages: list[dict[str, Any]] | None = None,
    ) -> None:
        assert helpers.aligner is not None
        self.ctx = ctx
        self.helpers = helpers
        self.upstream = upstream
        self.question = question
        self.chat = chat
        self.include_usage = include_usage
        self.trace = trace
        self.trace_on = trace_on
        self.limits = limits or ClientLimits()
        #: The user's own messages: what the reward gate scores answers to.
        self.messages = messages or []
        #: Seconds the response waited for its next event (on the backend or the aligner).
        self.waited_s = 0.0
        self._max_chars = helpers.aligner.max_sentence_chars
        self._choices: dict[int, _Choice] = {}
        self._out: asyncio.Queue[_Out] = asyncio.Queue()
        self._writer: ChunkWriter | None = None
        self._complete = False
        #: The backend's ``usage``, once the client's has been made to say what was delivered.
        self._backend_usage: Any = None

    # ------------------------------------------------------------------ the response's events

    async def events(self) -> AsyncGenerator[bytes, None]:
        """The stream's events, up to and including ``[DONE]`` (an error frame before it on a failure)."""
        reader = asyncio.ensure_future(self._read())
        finished: set[int] = set()
        read: _ReaderDone | None = None
        clock = time.perf_counter
        try:
            while read is None or any(i not in finished for i in self._choices):
                t = clock()
                try:
                    item = await self._out.get()
                finally:
                    self.waited_s += clock() - t
                if isinstance(item, bytes):
                    if item:
                        yield item
                elif isinstance(item, _ChoiceDone):
                    finished.add(item.index)
                elif isinstance(item, _ReaderDone):
                    read = item
                else:
                    yield self._failed(item)
                    return
            if read.error is not None:
                yield self._failed(read.error)
                return
            self._finish_trace(finished)
            writer = self._writer or ChunkWriter(self.chat, self.include_usage, id=None, created=None,
                                                 model=self.ctx.model)
            yield writer.last({"aligngate": self.trace.as_json()} if self.trace_on else None) + DONE
        finally:
            await self._stop(reader)
            self._capture()

    def _failed(self, exc: GatewayError) -> bytes:
        self.ctx.outcome = exc.code
        logger.warning("request %s: sentence-by-sentence correction failed: %s", self.ctx.request_id, exc.message)
        return error_frame(exc) + DONE

    async def _stop(self, reader: asyncio.Future[None]) -> None:
        """Cancel whatever still runs (the client went away, or a failure) and release the backend stream."""
        tasks: list[asyncio.Future[None]] = [reader, *(c.task for c in self._choices.values() if c.task)]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.upstream.close(complete=self._complete)

    # ------------------------------------------------------------------ reading the backend's stream

    async def _read(self) -> None:
        """Read the backend's stream into the choices' queues; always ends with a ``_ReaderDone``."""
        error: GatewayError | None = None
        try:
            decoder = EventDecoder(errors="replace")
            async for chunk in self.upstream.chunks():
                if self._events(decoder.feed(chunk)):
                    break
            else:
                self._events(decoder.finish())
            if not self._complete:
                raise UpstreamBroken(f"Backend '{self.ctx.model}' ended the stream without [DONE].")
        except GatewayError as exc:
            error = exc
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug must end this stream with an error frame, not hang it
            logger.exception("request %s: reading the backend's stream failed", self.ctx.request_id)
            error = UpstreamBroken(f"Backend '{self.ctx.model}' sent a stream the gateway could not read.")
        for choice in self._choices.values():
            if not choice.ended:
                choice.ended = True
                choice.queue.put_nowait(_End("stop") if error is None else _ABORT)
        self._out.put_nowait(_ReaderDone(error))

    def _events(self, events: list[Event]) -> bool:
        """Handle decoded SSE events; True once ``[DONE]`` was read (what follows it is not)."""
        for event in events:
            if event.done:
                self._complete = True
                return True
            try:
                obj = orjson.loads(event.data)
            except orjson.JSONDecodeError:
                raise UpstreamBroken(f"Backend '{self.ctx.model}' sent a malformed stream event.") from None
            if not isinstance(obj, dict):
                raise UpstreamBroken(f"Backend '{self.ctx.model}' sent a malformed stream event.")
            message = stream_error(obj)
            if message is not None:
                raise UpstreamBroken(f"Backend '{self.ctx.model}' failed mid-stream: {message}")
            self._chunk(obj)
        return False

    def _chunk(self, obj: dict[str, Any]) -> None:
        if self._writer is None:
            self._writer = ChunkWriter.for_chunk(obj, self.chat, self.include_usage)
        if isinstance(obj.get("usage"), dict):
            self._writer.usage = obj["usage"]
        for part in chunk_choices(obj, self.chat):
            choice = self._choice(part.index)
            if choice.ended:
                continue
            if part.tools:
                choice.tools = True
                raw = dict(part.raw)
                raw["finish_reason"] = None  # the finishing chunk is the corrector's, after the choice's text
                choice.queue.put_nowait(self._writer.choice(raw))
            elif part.text:
                choice.raw.append(part.text)
                for segment in choice.splitter.feed(part.text):
                    choice.queue.put_nowait(segment)
            if part.finish_reason is not None:
                for segment in choice.splitter.finish():
                    choice.queue.put_nowait(segment)
                choice.ended = True
                choice.queue.put_nowait(_End(part.finish_reason))

    def _choice(self, index: int) -> _Choice:
        choice = self._choices.get(index)
        if choice is None:
            splitter = SentenceSplitter(self._max_chars)
            choice = self._choices[index] = _Choice(index, splitter, budget=Budget(self.limits))
            choice.task = asyncio.ensure_future(self._correct(choice))
        return choice

    # ------------------------------------------------------------------ correcting one choice

    async def _correct(self, choice: _Choice) -> None:
        """Take the choice's items in order and put its events on the output queue."""
        try:
            while True:
                item = await choice.queue.get()
                if isinstance(item, _Abort):
                    break
                if isinstance(item, _End):
                    self._send(choice, self._writer_now().finish(choice.index, item.reason))
                    break
                if isinstance(item, bytes):
                    self._send(choice, item)
                    continue
                text = await self._segment(choice, item)
                choice.served.append(text)
                if text:
                    self._send(choice, self._writer_now().text(choice.index, text))
                if choice.budget.ended is not None:  # the client's max_tokens or stop: the rest is not sent
                    self._send(choice, self._writer_now().finish(choice.index, choice.budget.ended))
                    break
        except GatewayError as exc:  # HelperFailed: on_error fail
            self._out.put_nowait(exc)
            return
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug: end the stream with an error frame rather than hang it
            logger.exception("request %s: correcting choice %d failed", self.ctx.request_id, choice.index)
            self._out.put_nowait(HelperFailed("The aligner failed (internal error)."))
            return
        self._out.put_nowait(_ChoiceDone(choice.index))

    def _writer_now(self) -> ChunkWriter:
        assert self._writer is not None  # set by the first chunk, before any choice exists
        return self._writer

    def _send(self, choice: _Choice, event: bytes) -> None:
        if not choice.opened:  # the choice's role chunk goes out with its first event
            choice.opened = True
            event = self._writer_now().role(choice.index) + event
        self._out.put_nowait(event)

    async def _segment(self, choice: _Choice, segment: Segment) -> str:
        """What the client gets for ``segment``: its correction, or the backend's own text."""
        skip = sentence_skip(segment)
        if skip is None and choice.failed is not None:
            skip = "after_failure"
        budget = choice.budget
        if skip is not None:
            self.helpers.passed_sentences("code" if skip in ("code", "no_text") else "uncorrected")
            choice.sentences.append(SentenceTrace(original=segment.text, skipped=skip))
            served = budget.take(segment.text, None)
            choice.results.append(SentenceResult(segment.text, served, skip, 0.0))
            return served
        prefix = "".join(choice.served).strip()
        outcome = await self.helpers.correct_sentence(  # HelperFailed: fail
            self.question, prefix, segment.body, max_tokens=budget.cap(self.helpers.aligner_max_tokens)
        )
        choice.aligner_s += outcome.elapsed_s
        ms = round(outcome.elapsed_s * 1000, 3)
        if outcome.failed:
            choice.failed = outcome.skipped
        result = outcome.result
        spent = (result.helper_prompt_tokens, result.helper_completion_tokens) if result is not None else (0, 0)
        if not outcome.corrected:
            choice.sentences.append(SentenceTrace(original=segment.text, skipped=outcome.skipped, ms=ms))
            served = budget.take(segment.text, None)
            choice.results.append(SentenceResult(segment.text, served, outcome.skipped, ms, spent=spent))
            return served
        gate = await self._gate(prefix, segment.body, outcome.text)  # HelperFailed: on_error fail
        if gate is not None and gate.skipped is not None:  # the gate kept the backend's sentence
            choice.sentences.append(SentenceTrace(original=segment.text, skipped=gate.skipped, ms=ms, gate=gate))
            served = budget.take(segment.text, None)
            choice.results.append(SentenceResult(segment.text, served, gate.skipped, ms, spent=spent))
            return served
        tokens = result.tokens if result is not None else None
        served = budget.take(segment.replaced(outcome.text), tokens)
        choice.sentences.append(SentenceTrace(original=segment.text, corrected=served, ms=ms, gate=gate))
        choice.results.append(SentenceResult(segment.text, served, None, ms, tokens, spent))
        return served

    async def _gate(self, prefix: str, sentence: str, corrected: str) -> GateVerdict | None:
        """The reward gate's verdict on one sentence's correction (None without a gate)."""
        gate = self.helpers.gate
        if gate is None:
            return None
        before = f"{prefix} " if prefix else ""
        [verdict] = await gate.judge(self.messages, [(before + sentence, before + corrected)])
        return verdict

    # ------------------------------------------------------------------ the end: trace, metrics, store

    def _finish_trace(self, finished: set[int]) -> None:
        choices = [self._choices[i] for i in sorted(self._choices)]
        text = [c for c in choices if c.raw or not c.tools]
        for choice in text:
            if choice.index in finished:
                self.helpers.answer_corrected(choice.aligner_s, choice.skipped())
        trace = self.trace
        trace.helper_ms.aligner = round(max((c.aligner_s for c in choices), default=0.0) * 1000, 3)
        originals = [("".join(c.raw) if c.raw or not c.tools else None) for c in choices]
        skipped = [c.skipped() for c in choices]
        sentences = [(c.sentences if c.raw or not c.tools else None) for c in choices]
        if len(choices) == 1:
            trace.original_content, trace.aligner_skipped, trace.sentences = originals[0], skipped[0], sentences[0]
        else:
            trace.original_content, trace.aligner_skipped, trace.sentences = originals, skipped, sentences
        results = [self._result(c) for c in text]
        add_aligner_tokens(trace, results)
        if self._writer is not None:
            self._backend_usage = self._writer.usage
            self._writer.usage = delivered_usage(self._writer.usage, len(choices), results, trace)

    @staticmethod
    def _result(choice: _Choice) -> AlignResult:
        """The choice as the aligner's result would say it (for ``usage``)."""
        raw, served = "".join(choice.raw), "".join(choice.served)
        corrected = any(r.corrected for r in choice.results)
        return AlignResult(
            served, raw, None if corrected else "no_answer", choice.aligner_s * 1000, tuple(choice.results),
            sum(r.tokens or 0 for r in choice.results), choice.budget.ended,
            sum(r.spent[0] for r in choice.results), sum(r.spent[1] for r in choice.results),
        )

    def _capture(self) -> None:
        capture = self.ctx.capture
        if capture is None:
            return
        first = self._choices.get(0) or next(iter(self._choices.values()), None)
        if first is not None and capture.bodies:
            capture.raw_answer = "".join(first.raw) if first.raw else None
            capture.final_answer = "".join(first.served) if first.served else None
        if self._writer is not None:  # the backend's own counts, as on every arm
            usage = self._writer.usage if self._backend_usage is None else self._backend_usage
            capture.prompt_tokens, capture.completion_tokens = usage_counts({"usage": usage})
