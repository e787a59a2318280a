"""Token buckets in Redis (``server.rate_limits.backend: redis://...``): one set of buckets for every worker and
every replica of the gateway, with the arithmetic of ``MemoryBuckets`` (``gateway/ratelimit/buckets.py``).

Each operation is one Lua script, so it is atomic in Redis whatever other gateways do meanwhile: ``acquire``
brings every bucket of a request up to the server's clock (``redis.call('TIME')``: one clock for all replicas)
and takes from all of them or from none; ``adjust`` gives back to (or takes more from) the token buckets of a
settled reservation. A bucket is a hash ``{l: level, t: stamp}`` under ``<prefix>:{<tag>}:<name>``: ``name`` is a
digest of the bucket's whole name and ``tag`` one of its API key's digest (so that the buckets of one request
share a Redis Cluster slot); neither is an API key or a user name. A bucket that would be full again expires
then (a missing bucket is a full one), so idle buckets leave nothing behind.

**Fail open.** Redis down, slow (no answer within ``server.rate_limits.redis_timeout_s``) or failing never fails
a request: ``acquire`` answers ``unchecked`` (the request passes, with no ``remaining``/``reset`` to report) and a
settle is skipped. Each failure is counted in ``aligngate_rate_limit_errors_total{op,reason}``; the first of an
outage is logged at once (with the ``rid=`` of the request that met it) and then at most one line every
``LOG_INTERVAL_S`` with how many requests passed unchecked. After a failure Redis is left alone for
``RETRY_S`` (requests meanwhile pass, counted as ``down``), then the next request tries it again: when it
answers, limits hold again and a line says so.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
from collections.abc import Callable, Sequence
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway import metrics
from gateway.ratelimit.buckets import BucketKey, BucketState, Charge, Decision

logger = logging.getLogger(__name__)

#: Seconds Redis is left alone after a failure before a request tries it again.
RETRY_S = 1.0
#: Least seconds between two log lines about one outage.
LOG_INTERVAL_S = 30.0

# Shared by both scripts: bring bucket i (KEYS[i]; rate a second and burst in ARGV) up to `now`, and store one.
_LUA_COMMON = """
local function level_of(key, rate, burst, now)
  local b = redis.call('HMGET', key, 'l', 't')
  if not b[1] then return burst end
  return math.min(burst, tonumber(b[1]) + math.max(now - tonumber(b[2]), 0) * rate)
end
local function store(key, level, rate, burst, now)
  if level >= burst then
    redis.call('DEL', key)
  else
    redis.call('HSET', key, 'l', string.format('%.17g', level), 't', string.format('%.17g', now))
    redis.call('PEXPIRE', key, math.ceil((burst - level) / rate * 1000) + 1000)
  end
end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
"""

#: KEYS: the buckets; ARGV: rate, burst, amount for each. Returns {refused (1-based; 0: none), level, level, ...}:
#: the levels after the decision (taken when every charge fitted, else as they were).
ACQUIRE_LUA = _LUA_COMMON + """
local levels = {}
local refused = 0
for i = 1, #KEYS do
  local rate, burst, amount = tonumber(ARGV[3*i-2]), tonumber(ARGV[3*i-1]), tonumber(ARGV[3*i])
  levels[i] = level_of(KEYS[i], rate, burst, now)
  if refused == 0 and levels[i] < math.min(amount, burst) then refused = i end
end
if refused == 0 then
  for i = 1, #KEYS do
    local rate, burst, amount = tonumber(ARGV[3*i-2]), tonumber(ARGV[3*i-1]), tonumber(ARGV[3*i])
    levels[i] = levels[i] - amount
    store(KEYS[i], levels[i], rate, burst, now)
  end
end
local out = {refused}
for i = 1, #KEYS do out[i + 1] = string.format('%.17g', levels[i]) end
return out
"""

#: KEYS: the buckets; ARGV[1]: units given back (< 0: taken), then rate, burst for each.
ADJUST_LUA = _LUA_COMMON + """
local back = tonumber(ARGV[1])
for i = 1, #KEYS do
  local rate, burst = tonumber(ARGV[2*i]), tonumber(ARGV[2*i+1])
  store(KEYS[i], math.min(burst, level_of(KEYS[i], rate, burst, now) + back), rate, burst, now)
end
return 1
"""


def redis_key(prefix: str, key: BucketKey) -> str:
    """The Redis key of bucket ``key``: digests only, tagged with its API key's (the name's second part)."""
    tag = hashlib.sha256(("rl-tag\x1f" + key[min(1, len(key) - 1)]).encode("utf-8", "surrogateescape"))
    name = hashlib.sha256(("rl\x1f" + "\x1f".join(key)).encode("utf-8", "surrogateescape"))
    return f"{prefix}:{{{tag.hexdigest()[:16]}}}:{name.hexdigest()[:32]}"


def redacted(url: str) -> str:
    """``url`` without its password, for logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit(parts._replace(netloc=user + host))


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError | RedisTimeoutError):
        return "timeout"
    if isinstance(exc, RedisConnectionError | OSError):
        return "connection"
    return "error"


class _Health:
    """Whether Redis answers: counts and logs failures (one line per outage and interval), and says when to try."""

    def __init__(self, where: str, clock: Callable[[], float]) -> None:
        self.where = where
        self._clock = clock
        self._down_since: float | None = None
        self._retry_at = 0.0
        self._logged_at = 0.0
        self._unchecked = 0  # requests let through since the last log line

    @property
    def down(self) -> bool:
        return self._down_since is not None

    def should_try(self) -> bool:
        return self._clock() >= self._retry_at

    def skipped(self, op: str) -> None:
        """A call not made: Redis failed less than ``RETRY_S`` ago."""
        metrics.rate_limit_error(op, "down")
        self._unchecked += op == "acquire"

    def failed(self, op: str, exc: BaseException) -> None:
        reason = _reason(exc)
        metrics.rate_limit_error(op, reason)
        now = self._clock()
        self._retry_at = now + RETRY_S
        self._unchecked += op == "acquire"
        if self._down_since is None:
            self._down_since = now
        elif now - self._logged_at < LOG_INTERVAL_S:
            return
        self._logged_at = now
        logger.warning(
            "rate limits: Redis at %s failed (%s on %s: %s): requests pass unchecked until it answers; "
            "%d passed unchecked so far in this outage (aligngate_rate_limit_errors_total)",
            self.where, reason, op, exc.__class__.__name__, self._unchecked,
        )

    def succeeded(self) -> None:
        if self._down_since is None:
            return
        logger.warning(
            "rate limits: Redis at %s answers again after %.1fs; %d requests passed unchecked meanwhile",
            self.where, self._clock() - self._down_since, self._unchecked,
        )
        self._down_since = None
        self._unchecked = 0


class RedisBuckets:
    """Buckets in Redis at ``url``, keys under ``prefix``; each call given up after ``timeout_s`` (fail open)."""

    def __init__(self, url: str, *, prefix: str = "aligngate:rl", timeout_s: float = 0.1,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.prefix = prefix
        self.timeout_s = timeout_s
        self._client = aioredis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, retry=Retry(NoBackoff(), 0),
            health_check_interval=0,
        )
        self._acquire = self._client.register_script(ACQUIRE_LUA)
        self._adjust = self._client.register_script(ADJUST_LUA)
        self.health = _Health(redacted(url), clock)

    async def acquire(self, charges: Sequence[Charge]) -> Decision:
        if not self.health.should_try():
            self.health.skipped("acquire")
            return Decision((), unchecked=True)
        keys = [redis_key(self.prefix, c.key) for c in charges]
        args: list[str] = []
        for c in charges:
            args += [repr(c.limit.per_second), str(c.limit.burst), repr(float(c.amount))]
        try:
            async with asyncio.timeout(self.timeout_s):
                out = await self._acquire(keys=keys, args=args)
        except Exception as exc:  # whatever went wrong, the request passes
            self.health.failed("acquire", exc)
            return Decision((), unchecked=True)
        self.health.succeeded()
        refused = int(out[0]) - 1
        levels = [float(v) for v in out[1:]]
        states = tuple(
            BucketState(level, max(c.limit.burst - level, 0.0) / c.limit.per_second)
            for c, level in zip(charges, levels, strict=True)
        )
        if refused < 0:
            return Decision(states)
        charge = charges[refused]
        need = min(charge.amount, float(charge.limit.burst))
        return Decision(states, refused, max(need - levels[refused], 0.0) / charge.limit.per_second)

    async def adjust(self, charges: Sequence[Charge], back: float) -> None:
        if not charges or back == 0 or math.isnan(back):
            return
        if not self.health.should_try():
            self.health.skipped("settle")
            return
        args = [repr(float(back))]
        for c in charges:
            args += [repr(c.limit.per_second), str(c.limit.burst)]
        try:
            async with asyncio.timeout(self.timeout_s):
                await self._adjust(keys=[redis_key(self.prefix, c.key) for c in charges], args=args)
        except Exception as exc:
            self.health.failed("settle", exc)
            return
        self.health.succeeded()

    async def close(self) -> None:
        await self._client.aclose()
