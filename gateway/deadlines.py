"""Coarse deadlines without a timer per request: one task per event loop wakes every ``TICK_S`` and fires what has
expired.

A request's body deadline (``server.body_timeout_s``) and a connection's header deadline
(``server.header_timeout_s``) are set and cleared on every request, and nearly always cleared: a timer handle
for each costs more than the rest of the bookkeeping (creating and cancelling one is a few microseconds), a
dictionary entry well under one. The price is precision: a deadline fires up to ``TICK_S`` late. The task runs only
while deadlines are pending, so an idle worker, and a stopped loop, have none.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Hashable

logger = logging.getLogger(__name__)

#: How often pending deadlines are checked (seconds): how late one may fire.
TICK_S = 0.25


class Deadlines:
    """The pending deadlines of one event loop."""

    __slots__ = ("_entries", "_loop", "_task")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        #: owner → (the loop time it expires at, what to call then)
        self._entries: dict[Hashable, tuple[float, Callable[[], None]]] = {}
        self._task: asyncio.Task[None] | None = None

    def add(self, owner: Hashable, delay_s: float, fire: Callable[[], None]) -> None:
        """Call ``fire`` once ``delay_s`` seconds have passed (up to ``TICK_S`` later), unless ``owner`` (a
        connection, a task: one deadline each) discards it first."""
        self._entries[owner] = (self._loop.time() + delay_s, fire)
        if self._task is None:
            self._task = self._loop.create_task(self._run())

    def discard(self, owner: Hashable) -> None:
        self._entries.pop(owner, None)

    def __len__(self) -> int:
        return len(self._entries)

    async def _run(self) -> None:
        try:
            while self._entries:
                await asyncio.sleep(TICK_S)
                now = self._loop.time()
                expired = [key for key, (at, _) in self._entries.items() if at <= now]
                for key in expired:
                    entry = self._entries.pop(key, None)
                    if entry is not None:
                        try:
                            entry[1]()
                        except Exception:
                            logger.exception("a deadline's callback failed")
        finally:
            self._task = None


_by_loop: dict[asyncio.AbstractEventLoop, Deadlines] = {}


def deadlines(loop: asyncio.AbstractEventLoop | None = None) -> Deadlines:
    """The deadlines of ``loop`` (default: the running loop)."""
    loop = loop or asyncio.get_running_loop()
    found = _by_loop.get(loop)
    if found is None:
        for old in [lp for lp in _by_loop if lp.is_closed()]:  # loops of earlier runs (tests)
            del _by_loop[old]
        found = _by_loop[loop] = Deadlines(loop)
    return found
