"""Per-request context: identity, timings and labels gathered while a request moves through the gateway.

Created by the request middleware, filled in by services, read back for the response headers, the
metrics and the access-log line.

Time spent waiting on upstreams and helpers is accounted here and nowhere else: an awaited call goes through
:meth:`RequestContext.waited`, and a stream that waits piecemeal (an upstream's SSE answer, a streamed correction)
is registered once with :meth:`RequestContext.track` and keeps its own ``waited_s``. ``overhead_s`` is the elapsed
time minus those waits and the time blocked writing to the client.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from starlette.requests import Request

T = TypeVar("T")

#: The id of the request being served (set by the request middleware for the request's task and what it starts).
REQUEST_ID: ContextVar[str | None] = ContextVar("aligngate_request_id", default=None)


class RequestIdFormatter(logging.Formatter):
    """Appends `` rid=<request id>`` to every line logged while a request is served (what a failure's details
    are found by: an upstream's address, a library's message), except the access log's, which names it already."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        text = super().formatMessage(record)
        if record.name == "aligngate.access":
            return text
        rid = REQUEST_ID.get()
        return text if rid is None else f"{text} rid={rid}"


class Waiting(Protocol):
    """Something that waits on an upstream or helper in pieces and adds up how long (seconds)."""

    waited_s: float


class RecordSink(Protocol):
    """Where a finished request's record goes (the trace store): O(1), never raises."""

    def submit(self, ctx: RequestContext, status: int, duration_s: float, overhead_s: float) -> None: ...


@dataclass(slots=True)
class Capture:
    """What the trace store records of one inference request, filled in while it runs.

    Set on the context once the request has an arm; the middleware hands the context to ``sink`` when the
    response has ended (the store; for a shadow-sampled request the shadow runner, which records it and then
    starts its shadow run). The hot path only keeps references here (the request's bytes, the relayed
    answer's bytes or events): the store's background writer parses them, so recording costs a request
    nothing it would not spend anyway. ``bodies`` is ``store.log_bodies``: when off, no text is captured, only what
    token counts need (the upstream's answer, or a stream's last two pieces).
    """

    sink: RecordSink
    experiment: str
    endpoint: str  # "chat" or "completions"
    bodies: bool
    arm_forced: bool = False
    user_source: str = "random"
    #: The key the user was assigned by (hashed before it is stored); None for a random draw.
    user_key: str | None = None
    bucket: int | None = None
    #: The client's request body (only with ``bodies``).
    request_body: bytes | None = None
    #: The upstream's whole answer, relayed as it came (non-streamed, no correction).
    response_body: bytes | None = None
    #: The relayed SSE pieces of a streamed answer (without ``bodies``: only the last two, for usage).
    chunks: list[bytes] = field(default_factory=list)
    #: The pipeline's trace (rewritten prompt, helper times, skips) when the request went through it.
    trace: Any = None
    #: Set by the pipeline when it parsed the answer itself (aligning arms): choice 0, before and after.
    raw_answer: str | None = None
    final_answer: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    #: Shadow mode (``gateway/pipeline/shadow.py``): the pending shadow run of a sampled control request, which
    #: starts when ``sink`` records the request. Its answer is read from ``response_body`` or ``chunks``, so a
    #: sampled stream keeps all of its pieces even without ``bodies``. None for every other request.
    shadow: Any = None

    def add_chunk(self, piece: bytes) -> None:
        chunks = self.chunks
        chunks.append(piece)
        if not self.bodies and len(chunks) > 2 and self.shadow is None:
            del chunks[0]


@dataclass(slots=True)
class RequestContext:
    request_id: str
    started: float  # time.perf_counter() at arrival
    #: Configured backend name once known (never a raw client string: it is a metric label).
    model: str | None = None
    arm: str | None = None
    stream: bool = False
    #: Seconds spent in awaited upstream and helper calls (``waited``), and blocked writing to the client.
    upstream_s: float = 0.0
    client_s: float = 0.0
    #: Streams whose own ``waited_s`` counts as upstream time too (``track``).
    streams: list[Waiting] | None = None
    first_byte_s: float | None = None
    replica: int | None = None
    #: Why a response failed after it started (stream error code), or "client_disconnected".
    outcome: str | None = None
    in_flight_counted: bool = False
    #: What the trace store records (None: this request is not recorded).
    capture: Capture | None = None
    #: Headers every answer to this request carries (the rate limits'), replacing any of the same name.
    headers: list[tuple[bytes, bytes]] | None = None

    async def waited(self, aw: Awaitable[T]) -> T:
        """Await an upstream or helper call, counting its time (failures and cancellations included) as waiting."""
        t = time.perf_counter()
        try:
            return await aw
        finally:
            self.upstream_s += time.perf_counter() - t

    def track(self, stream: Waiting) -> None:
        """Count ``stream.waited_s`` as waiting, whatever it grows to."""
        if self.streams is None:
            self.streams = [stream]
        else:
            self.streams.append(stream)

    def waiting_s(self) -> float:
        """Seconds spent waiting on upstreams and helpers so far."""
        streams = self.streams
        if streams is None:
            return self.upstream_s
        return self.upstream_s + sum(s.waited_s for s in streams)

    def overhead_s(self, now: float | None = None) -> float:
        """Time spent in the gateway itself so far: elapsed minus upstream, helper and client waits."""
        elapsed = (now if now is not None else time.perf_counter()) - self.started
        return max(elapsed - self.waiting_s() - self.client_s, 0.0)


def get_context(request: Request) -> RequestContext:
    ctx: RequestContext = request.scope["state"]["ctx"]
    return ctx
