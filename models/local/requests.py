"""The local engine's units of work: a request (one call, ``n`` choices) and its rows (one per choice).

A ``Request`` is created on the event loop and handed to the worker thread; the worker answers by
putting ``Delta``s (or an ``EngineError``) on the request's asyncio queue through its loop. ``cancelled``
is the one field the loop writes after submission: the worker reads it at every step.

A ``Row`` is one sequence in the decode batch: its sampler, its text state (incremental detokenizer and
stop strings), optionally its prompt-lookup index, and its token accounting.
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field

from models.engine import ChatTurn, Delta, EngineError, FinishReason, SamplingParams
from models.local.detok import IncrementalDetokenizer, StopText
from models.local.lookup import NgramIndex
from models.local.sampling import RowSampler

_ids = itertools.count(1)

Event = Delta | EngineError


@dataclass(eq=False, slots=True)
class Request:
    """One engine call: a raw prompt or chat turns, its sampling params, and where to send results."""

    prompt: str | tuple[ChatTurn, ...]
    params: SamplingParams
    #: Stream every text piece (True) or only one final Delta per choice carrying the whole text.
    stream: bool
    #: Use prompt-lookup drafts for this request's greedy rows (0 = off).
    lookup_tokens: int
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue[Event] = field(default_factory=asyncio.Queue)
    cancelled: bool = False
    #: Filled by the worker on first admission (kept if the request is put back for lack of room).
    prompt_ids: list[int] | None = None
    id: int = field(default_factory=lambda: next(_ids))


@dataclass(eq=False, slots=True)
class Row:
    """One choice of a request, live in the decode batch."""

    request: Request
    index: int
    prompt_tokens: int
    max_tokens: int
    sampler: RowSampler
    detok: IncrementalDetokenizer
    stop: StopText
    eos_token_ids: frozenset[int]
    ngram: NgramIndex | None = None
    #: The newest token: sampled, not yet fed to the model (it is the next step's input).
    last_token: int = 0
    #: The position ``last_token`` takes when it is fed.
    position: int = 0
    completion_tokens: int = 0
    finish_reason: FinishReason | None = None
    #: Text released since the last event (streaming).
    pending: str = ""

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    @property
    def budget(self) -> int:
        """Tokens this row may still produce."""
        return self.max_tokens - self.completion_tokens

    def accept(self, token: int) -> bool:
        """Take one generated token; True once the row is finished (EOS, a stop string, or its budget)."""
        self.completion_tokens += 1
        self.last_token = token
        if self.ngram is not None:
            self.ngram.append(token)
        if token in self.eos_token_ids:
            self._finish("stop")
            return True
        self.pending += self.stop.feed(self.detok.push(token))
        if self.stop.stopped:
            self.finish_reason = "stop"
        elif self.completion_tokens >= self.max_tokens:
            self._finish("length")
        return self.finished

    def end(self, reason: FinishReason) -> None:
        """Finish the row now (its runtime stopped it), releasing any held-back text."""
        if not self.finished:
            self._finish(reason)

    def _finish(self, reason: FinishReason) -> None:
        self.pending += self.stop.feed(self.detok.flush())
        if self.stop.stopped:  # the held-back text completed a stop string after all
            self.finish_reason = "stop"
            return
        self.pending += self.stop.finish()
        self.finish_reason = reason

    def event(self) -> Delta | None:
        """The Delta to send after a step, if any."""
        if not self.request.stream:
            if not self.finished:
                return None
            return self._final(self.stop.text)
        if self.finished:
            return self._final(self._take_pending())
        if self.pending:
            return Delta(text=self._take_pending(), index=self.index)
        return None

    def _take_pending(self) -> str:
        text, self.pending = self.pending, ""
        return text

    def _final(self, text: str) -> Delta:
        return Delta(
            text=text,
            index=self.index,
            finish_reason=self.finish_reason,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
        )
