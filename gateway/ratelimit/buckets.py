"""Token buckets: the storage behind the rate limits, and its one implementation in memory.

A bucket holds up to ``Limit.burst`` units (requests, or tokens) and refills continuously at ``Limit.per_minute`` /
60 a second; a full bucket is the same as a bucket never used, so a store may forget full buckets. ``Buckets`` is
what the limiter (``gateway/ratelimit/limiter.py``) needs of a store:

* ``acquire(charges)``: all-or-nothing. Each charge fits when its bucket holds at least ``min(amount, burst)`` (a
  charge larger than the whole bucket is let through on a full bucket and leaves it in debt); if every charge fits,
  all are taken, else none is, and the decision names the first that did not fit and how long until it would;
* ``adjust(charges, back)``: give ``back`` units to each charge's bucket (never above the burst), or take more
  (``back`` < 0, which may leave a debt), as when a token reservation is settled from the answer's ``usage``;
* ``close()``: let go of what the store holds (a connection pool).

A store that cannot answer (Redis down) lets the request through: its decision is ``unchecked`` (no states).

:class:`MemoryBuckets` keeps them in this process (each worker its own); ``gateway/ratelimit/redis_buckets.py``
keeps them in Redis (one script per operation, the same arithmetic under the server's clock), shared by every
worker and replica. :func:`open_buckets` opens the one ``server.rate_limits.backend`` names (the Redis client is
imported only then).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from gateway.config import RateLimitSettings

#: A bucket's name: its scope and identity, e.g. ``("key", <digest>)`` or ``("user", <digest>, <user>, "tokens")``.
BucketKey = tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Limit:
    """A bucket's refill rate (per minute) and size."""

    per_minute: int
    burst: int

    @property
    def per_second(self) -> float:
        return self.per_minute / 60.0


@dataclass(frozen=True, slots=True)
class Charge:
    """Take ``amount`` units from bucket ``key`` (governed by ``limit``)."""

    key: BucketKey
    limit: Limit
    amount: float


@dataclass(frozen=True, slots=True)
class BucketState:
    """A bucket just after a decision: what is left (below 0: a debt) and how long until it is full again."""

    remaining: float
    full_in_s: float


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of ``acquire``: one state per charge, in order; ``refused`` is the index of the first charge
    that did not fit (then nothing was taken), ``retry_after_s`` how long until it would. ``unchecked``: the store
    could not decide (it is unavailable) and lets the request through; then ``states`` is empty."""

    states: tuple[BucketState, ...]
    refused: int | None = None
    retry_after_s: float = 0.0
    unchecked: bool = False

    @property
    def allowed(self) -> bool:
        return self.refused is None


class Buckets(Protocol):
    """Where the buckets live (this process, or a store shared by every worker and replica)."""

    async def acquire(self, charges: Sequence[Charge]) -> Decision: ...

    async def adjust(self, charges: Sequence[Charge], back: float) -> None: ...

    async def close(self) -> None: ...


class MemoryBuckets:
    """Buckets in this process's memory: per worker, lost at restart; at most ``max_tracked`` of them, the least
    recently used forgotten beyond that (it starts full again: the store errs on the client's side)."""

    def __init__(self, max_tracked: int = 100_000, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_tracked = max_tracked
        self._clock = clock
        #: key → [level, stamp]; insertion order is recency (a touched bucket is moved to the end).
        self._buckets: dict[BucketKey, list[float]] = {}

    def __len__(self) -> int:
        return len(self._buckets)

    def _level(self, key: BucketKey, limit: Limit, now: float) -> list[float]:
        """The bucket of ``key`` brought up to ``now``, made the most recently used."""
        bucket = self._buckets.pop(key, None)
        if bucket is None:
            bucket = [float(limit.burst), now]
            if len(self._buckets) >= self.max_tracked:
                del self._buckets[next(iter(self._buckets))]
        else:
            bucket[0] = min(float(limit.burst), bucket[0] + (now - bucket[1]) * limit.per_second)
            bucket[1] = now
        self._buckets[key] = bucket
        return bucket

    async def acquire(self, charges: Sequence[Charge]) -> Decision:
        now = self._clock()
        buckets = [self._level(c.key, c.limit, now) for c in charges]
        for i, (charge, bucket) in enumerate(zip(charges, buckets, strict=True)):
            need = min(charge.amount, float(charge.limit.burst))
            if bucket[0] < need:
                return Decision(_states(charges, buckets), i, (need - bucket[0]) / charge.limit.per_second)
        for charge, bucket in zip(charges, buckets, strict=True):
            bucket[0] -= charge.amount
        return Decision(_states(charges, buckets))

    async def adjust(self, charges: Sequence[Charge], back: float) -> None:
        now = self._clock()
        for charge in charges:
            bucket = self._level(charge.key, charge.limit, now)
            bucket[0] = min(float(charge.limit.burst), bucket[0] + back)

    async def close(self) -> None:
        return None


def open_buckets(settings: RateLimitSettings) -> Buckets:
    """The store ``settings.backend`` names: memory, or Redis (``redis://``, ``rediss://``, ``unix://``)."""
    if settings.backend == "memory":
        return MemoryBuckets(settings.max_tracked)
    from gateway.ratelimit.redis_buckets import RedisBuckets  # the `redis` extra, imported only when configured

    return RedisBuckets(settings.backend, prefix=settings.redis_prefix, timeout_s=settings.redis_timeout_s)


def _states(charges: Sequence[Charge], buckets: list[list[float]]) -> tuple[BucketState, ...]:
    return tuple(
        BucketState(b[0], max(c.limit.burst - b[0], 0.0) / c.limit.per_second)
        for c, b in zip(charges, buckets, strict=True)
    )
