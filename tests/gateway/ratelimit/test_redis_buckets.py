"""gateway/ratelimit/redis_buckets.py against a real redis-server: the scripts' arithmetic (all or nothing over
several buckets, refill on the server's clock, debt, settling), key names and expiry, and failing open."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from prometheus_client import REGISTRY

from gateway.config import RateLimitSettings
from gateway.ratelimit import redis_buckets
from gateway.ratelimit.buckets import Charge, Limit, open_buckets
from gateway.ratelimit.limiter import RateLimiter
from gateway.ratelimit.redis_buckets import RedisBuckets, redacted, redis_key
from models.wire.schemas import ChatCompletionRequest
from tests.fakes.redis import LocalRedis

SLOW = Limit(per_minute=6, burst=3)  # one every 10 s: no refill within a test
FAST = Limit(per_minute=60_000, burst=100)  # a thousand a second


@pytest.fixture
async def buckets(redis_server: LocalRedis) -> AsyncIterator[RedisBuckets]:
    if not redis_server.ping():
        redis_server.start()
    redis_server.command("FLUSHALL")
    store = RedisBuckets(redis_server.url, timeout_s=0.5)
    try:
        yield store
    finally:
        await store.close()


def errors(op: str, reason: str) -> float:
    return REGISTRY.get_sample_value("aligngate_rate_limit_errors_total", {"op": op, "reason": reason}) or 0.0


async def test_charges_are_all_or_nothing_over_several_buckets(buckets: RedisBuckets) -> None:
    key, user = Charge(("key", "k1", "requests"), SLOW, 1), Charge(("user", "k1", "u", "requests"), Limit(6, 1), 1)
    first = await buckets.acquire([key, user])
    assert first.allowed and [s.remaining for s in first.states] == [2, 0]
    assert first.states[0].full_in_s == pytest.approx(10, abs=0.1)
    refused = await buckets.acquire([key, user])
    assert refused.refused == 1 and refused.retry_after_s == pytest.approx(10, abs=0.1)
    # nothing was taken from the key's bucket by the refused request
    assert (await buckets.acquire([key])).states[0].remaining == pytest.approx(1, abs=0.01)


async def test_buckets_refill_on_the_servers_clock_up_to_the_burst(buckets: RedisBuckets) -> None:
    charge = Charge(("key", "k2", "tokens"), FAST, 100)
    assert (await buckets.acquire([charge])).states[0].remaining == pytest.approx(0, abs=1)
    assert not (await buckets.acquire([charge])).allowed
    await asyncio.sleep(0.15)  # 150 at 1000/s: full again, never above the burst
    again = await buckets.acquire([Charge(charge.key, FAST, 0)])
    assert again.states[0].remaining == 100


async def test_a_charge_larger_than_the_burst_passes_on_a_full_bucket_and_leaves_a_debt(buckets: RedisBuckets) -> None:
    tokens = Limit(per_minute=600, burst=100)  # 10 a second
    decision = await buckets.acquire([Charge(("key", "k3", "tokens"), tokens, 250)])
    assert decision.allowed and decision.states[0].remaining == pytest.approx(-150, abs=0.1)
    refused = await buckets.acquire([Charge(("key", "k3", "tokens"), tokens, 1)])
    assert not refused.allowed and refused.retry_after_s == pytest.approx(15.1, abs=0.1)


async def test_settling_gives_back_and_takes_more_never_above_the_burst(buckets: RedisBuckets) -> None:
    tokens = Limit(per_minute=6, burst=1000)
    charge = Charge(("key", "k4", "tokens"), tokens, 800)
    await buckets.acquire([charge])
    await buckets.adjust([charge], 700)  # reserved 800, used 100
    assert (await buckets.acquire([Charge(charge.key, tokens, 0)])).states[0].remaining == pytest.approx(900, abs=1)
    await buckets.adjust([charge], -950)  # used more than reserved: a debt
    assert (await buckets.acquire([Charge(charge.key, tokens, 0)])).states[0].remaining == pytest.approx(-50, abs=1)
    await buckets.adjust([charge], 10_000)
    assert (await buckets.acquire([Charge(charge.key, tokens, 0)])).states[0].remaining == 1000


async def test_keys_are_digests_under_the_prefix_and_expire_once_full(redis_server: LocalRedis,
                                                                     buckets: RedisBuckets) -> None:
    await buckets.acquire([Charge(("key", "sk-secret-digest", "requests"), SLOW, 1),
                           Charge(("user", "sk-secret-digest", "alice", "requests"), SLOW, 1)])
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        names = sorted(k.decode() for k in await client.keys("*"))
        assert len(names) == 2 and all(n.startswith("aligngate:rl:{") for n in names)
        assert not any("secret" in n or "alice" in n for n in names)
        assert len({n.split("}")[0] for n in names}) == 1  # one request's buckets share a cluster slot
        assert redis_key("aligngate:rl", ("key", "sk-secret-digest", "requests")) in names
        ttl = await client.pttl(names[0])
        assert 10_000 < ttl <= 11_000  # full again in 10 s, plus a second
    finally:
        await client.aclose()
    # a bucket full again is deleted, not kept
    await buckets.adjust([Charge(("key", "sk-secret-digest", "requests"), SLOW, 1)], 1)
    key = redis_key("aligngate:rl", ("key", "sk-secret-digest", "requests"))
    assert redis_server.command("EXISTS", key) == b":0\r\n"


def test_urls_lose_their_password_in_logs() -> None:
    assert redacted("redis://:hunter2@redis:6379/0") == "redis://:***@redis:6379/0"
    assert redacted("rediss://user:hunter2@redis:6380/1") == "rediss://user:***@redis:6380/1"
    assert redacted("redis://redis:6379/0") == "redis://redis:6379/0"


def test_open_buckets_opens_what_backend_names() -> None:
    assert type(open_buckets(RateLimitSettings())).__name__ == "MemoryBuckets"
    assert isinstance(open_buckets(RateLimitSettings(backend="redis://127.0.0.1:1/0")), RedisBuckets)


class _Silent:
    """A TCP server that accepts and never answers: a Redis that hangs."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                self.conns.append(self.sock.accept()[0])
            except OSError:
                return

    def close(self) -> None:
        self.sock.close()
        for c in self.conns:
            c.close()


async def test_a_hanging_redis_fails_open_within_the_timeout(caplog: pytest.LogCaptureFixture) -> None:
    silent = _Silent()
    store = RedisBuckets(f"redis://127.0.0.1:{silent.port}/0", timeout_s=0.1)
    before = errors("acquire", "timeout")
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        with caplog.at_level(logging.WARNING, logger=redis_buckets.__name__):
            decision = await store.acquire([Charge(("key", "k", "requests"), SLOW, 1)])
        assert loop.time() - started < 0.5
        assert decision.allowed and decision.unchecked and decision.states == ()
        assert errors("acquire", "timeout") == before + 1
        assert any("pass unchecked" in r.getMessage() for r in caplog.records)
    finally:
        await store.close()
        silent.close()


async def test_redis_down_fails_open_logs_once_and_recovers(redis_server: LocalRedis, buckets: RedisBuckets,
                                                            caplog: pytest.LogCaptureFixture,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(redis_buckets, "RETRY_S", 0.2)
    charge = Charge(("key", "k5", "requests"), Limit(per_minute=6, burst=1), 1)
    assert (await buckets.acquire([charge])).allowed
    assert not (await buckets.acquire([charge])).allowed
    redis_server.kill()
    failed, skipped = errors("acquire", "connection"), errors("acquire", "down")
    with caplog.at_level(logging.WARNING, logger=redis_buckets.__name__):
        for _ in range(20):
            assert (await buckets.acquire([charge])).unchecked
        await buckets.adjust([charge], 1)
    assert errors("acquire", "connection") == failed + 1  # tried once, then left alone for RETRY_S
    assert errors("acquire", "down") == skipped + 19
    assert errors("settle", "down") >= 1
    assert len([r for r in caplog.records if "pass unchecked" in r.getMessage()]) == 1
    redis_server.start()
    await asyncio.sleep(0.25)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=redis_buckets.__name__):
        assert (await buckets.acquire([charge])).allowed  # an empty Redis: the bucket is full again
        assert not (await buckets.acquire([charge])).allowed
    assert any("answers again" in r.getMessage() and "20 requests passed" in r.getMessage() for r in caplog.records)


async def test_an_unchecked_request_carries_the_limits_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = RateLimitSettings.model_validate(
        {"per_key": {"requests_per_minute": 5, "tokens_per_minute": 1000}, "backend": "redis://127.0.0.1:1/0"})
    store = RedisBuckets(settings.backend, timeout_s=0.1)  # nothing listens on port 1
    try:
        limiter = RateLimiter(settings, store)
        req = ChatCompletionRequest.model_validate({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
        admission = await limiter.admit("Bearer sk-1", None, req, 100)
        assert admission is not None
        assert dict(admission.headers) == {b"x-ratelimit-limit-requests": b"5", b"x-ratelimit-limit-tokens": b"1000"}
        await limiter.settle(admission, 200, 10)  # skipped quietly (Redis known down)
    finally:
        await store.close()
