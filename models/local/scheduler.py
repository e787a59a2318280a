"""Admission control between the event loops and the generation thread: a bounded FIFO of requests.

``submit`` (event loop) refuses at once with ``EngineOverloaded`` when ``max_queue`` requests already wait,
rather than letting latency pile up. ``next_group`` (worker thread) blocks while there is nothing to do;
when the worker is idle it waits ``batch_window_s`` after the first arrival so that concurrent callers
share one prefill, and it hands out requests in arrival order while their choices fit the free batch rows
(an idle worker always takes the head, even when its ``n`` exceeds the batch size).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque

from models.engine import EngineError, EngineOverloaded
from models.local.requests import Request


class RequestQueue:
    """Requests waiting for batch rows."""

    def __init__(self, max_queue: int, batch_window_s: float) -> None:
        self.max_queue = max_queue
        self.batch_window_s = batch_window_s
        self.submitted = 0
        self._cond = threading.Condition()
        self._waiting: deque[Request] = deque()
        self._closed = False

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def closed(self) -> bool:
        return self._closed

    # ------------------------------------------------------------------ event-loop side
    def submit(self, request: Request) -> None:
        with self._cond:
            if self._closed:
                raise EngineError("the local engine is closed")
            if len(self._waiting) >= self.max_queue:
                raise EngineOverloaded(f"local engine queue is full ({self.max_queue} requests waiting)")
            self._waiting.append(request)
            self.submitted += 1
            self._cond.notify()

    def cancel(self, request: Request) -> None:
        """Mark ``request`` cancelled and take it out of the queue if it still waits there."""
        request.cancelled = True
        with self._cond, contextlib.suppress(ValueError):  # it may have left the queue already
            self._waiting.remove(request)

    def close(self) -> None:
        """Refuse new requests and wake the worker (it fails what is left: see ``drain``)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    # ------------------------------------------------------------------ worker side
    def next_group(self, active_rows: int, max_batch: int) -> list[Request] | None:
        """Requests to admit now ([] = none), or None once closed. Blocks while idle with nothing waiting."""
        with self._cond:
            if active_rows == 0:
                while not self._waiting and not self._closed:
                    self._cond.wait()
                deadline = time.monotonic() + self.batch_window_s
                while not self._closed and sum(r.params.n for r in self._waiting) < max_batch:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
            if self._closed:
                return None
            free = max_batch - active_rows
            group: list[Request] = []
            while self._waiting:
                head = self._waiting[0]
                if (group or active_rows) and head.params.n > free:
                    break  # FIFO: the head waits for room rather than being overtaken
                group.append(self._waiting.popleft())
                free -= head.params.n
                if free <= 0:
                    break
            return group

    def drain(self) -> list[Request]:
        """Take every waiting request out (the worker fails them when it stops)."""
        with self._cond:
            waiting, self._waiting = list(self._waiting), deque()
            return waiting

    def requeue(self, requests: list[Request]) -> None:
        """Put requests that were handed out but not admitted back at the front, in order."""
        with self._cond:
            self._waiting.extendleft(reversed(requests))
