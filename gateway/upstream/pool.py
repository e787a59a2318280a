"""Replica pool of one backend: least-in-flight selection, ejection after repeated failures, probe-back.

Pure bookkeeping plus one background probe task per ejected replica; it performs no HTTP itself (the
``probe`` callable does), which keeps selection unit-testable without sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)

#: Longest cool-down an ejected replica waits between probes.
MAX_EJECT_S = 300.0


@dataclass(eq=False)
class Replica:
    """One upstream server URL and its live counters (identity equality: replicas are unique objects)."""

    url: str
    index: int
    in_flight: int = 0
    consecutive_failures: int = 0
    healthy: bool = True
    ejections: int = 0
    ejected_at: float = 0.0
    _probe_task: asyncio.Task[None] | None = field(default=None, repr=False)


ProbeFn = Callable[[Replica], Awaitable[bool]]


class ReplicaPool:
    """Chooses a replica per attempt and tracks health; one pool per backend per worker process."""

    def __init__(
        self,
        name: str,
        urls: list[str],
        *,
        eject_after: int,
        eject_s: float,
        probe: ProbeFn | None = None,
        max_eject_s: float = MAX_EJECT_S,
    ) -> None:
        if not urls:
            raise ValueError(f"backend {name!r} has no replica URLs")
        self.name = name
        self.replicas = [Replica(url=u, index=i) for i, u in enumerate(urls)]
        self._eject_after = eject_after
        self._eject_s = eject_s
        self._max_eject_s = max_eject_s
        self._probe = probe
        self._rr = 0

    def pick(self, exclude: Collection[Replica] = ()) -> Replica | None:
        """The healthy replica with the fewest in-flight requests, ties broken round-robin.

        When every replica not in ``exclude`` is ejected, the one ejected longest ago is returned anyway:
        a request should still try a possibly-recovered replica rather than fail without an attempt.
        Returns ``None`` only when ``exclude`` covers every replica.
        """
        replicas = self.replicas
        n = len(replicas)
        self._rr = (self._rr + 1) % n
        best: Replica | None = None
        fallback: Replica | None = None
        for k in range(n):
            r = replicas[(self._rr + k) % n]
            if r in exclude:
                continue
            if r.healthy:
                if best is None or r.in_flight < best.in_flight:
                    best = r
            elif fallback is None or r.ejected_at < fallback.ejected_at:
                fallback = r
        return best if best is not None else fallback

    @property
    def healthy_count(self) -> int:
        return sum(1 for r in self.replicas if r.healthy)

    def record_success(self, replica: Replica) -> None:
        replica.consecutive_failures = 0
        if not replica.healthy:
            self._reinstate(replica, "served a request")

    def record_failure(self, replica: Replica, reason: str) -> None:
        replica.consecutive_failures += 1
        if replica.healthy and replica.consecutive_failures >= self._eject_after:
            self._eject(replica, reason)

    def cooldown(self, replica: Replica) -> float:
        """Cool-down before the next probe: ``eject_s`` doubled per consecutive ejection, capped."""
        return float(min(self._eject_s * 2 ** max(replica.ejections - 1, 0), self._max_eject_s))

    def _eject(self, replica: Replica, reason: str) -> None:
        replica.healthy = False
        replica.ejections += 1
        replica.ejected_at = time.monotonic()
        logger.warning(
            "backend %s: replica %d ejected after %d consecutive failures (%s); probing in %.1fs",
            self.name, replica.index, replica.consecutive_failures, reason, self.cooldown(replica),
        )
        if self._probe is not None and replica._probe_task is None:
            replica._probe_task = asyncio.get_running_loop().create_task(self._probe_loop(replica))

    def _reinstate(self, replica: Replica, why: str) -> None:
        replica.healthy = True
        replica.consecutive_failures = 0
        replica.ejections = 0
        task, replica._probe_task = replica._probe_task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
        logger.info("backend %s: replica %d back in rotation (%s)", self.name, replica.index, why)

    async def _probe_loop(self, replica: Replica) -> None:
        assert self._probe is not None
        try:
            while not replica.healthy:
                await asyncio.sleep(self.cooldown(replica))
                if replica.healthy:
                    return
                ok = False
                try:
                    ok = await self._probe(replica)
                except Exception as exc:  # a probe must never kill the loop
                    logger.debug("probe of %s replica %d raised %r", self.name, replica.index, exc)
                if ok:
                    self._reinstate(replica, "probe succeeded")
                    return
                replica.ejections += 1
        finally:
            if replica._probe_task is asyncio.current_task():
                replica._probe_task = None

    async def close(self) -> None:
        tasks = [r._probe_task for r in self.replicas if r._probe_task is not None]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
