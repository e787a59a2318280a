"""``server.rate_limits.backend: redis://`` with real processes: two gateways sharing one real redis-server enforce
one limit together (each with memory buckets would allow it twice), a Redis killed mid-run lets requests through
(fail open, counted and logged), and a Redis started again enforces the limits again."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.e2e.support import Gateway, Procs, Stack, backend, gateway_config, metric_sum, wait_for
from tests.fakes.redis import LocalRedis

BURST = 4
CHAT = {"model": "alpha", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module")
def pair(stack: Stack, module_procs: Procs, redis_server: LocalRedis) -> tuple[Gateway, Gateway]:
    # one request a minute refills: none within the test; BURST requests at once
    limits = {"per_key": {"requests_per_minute": 1, "burst_requests": BURST}, "backend": redis_server.url,
              "redis_timeout_s": 0.1}
    config = gateway_config(backend("alpha", stack.a.v1), api_keys=["sk-one", "sk-two", "sk-three"],
                            rate_limits=limits)
    return module_procs.gateway(config, tag="redis-a"), module_procs.gateway(config, tag="redis-b")


def chat(gw: Gateway, key: str) -> httpx.Response:
    return gw.http.post("/v1/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {key}"})


def statuses(pair: tuple[Gateway, Gateway], key: str, n: int) -> list[int]:
    """``n`` requests with ``key``, alternating between the two gateways."""
    return [chat(pair[i % 2], key).status_code for i in range(n)]


def test_two_gateways_share_one_limit(pair: tuple[Gateway, Gateway]) -> None:
    a, b = pair
    first, second = chat(a, "sk-one"), chat(b, "sk-one")
    assert first.headers["x-ratelimit-remaining-requests"] == str(BURST - 1)
    assert second.headers["x-ratelimit-remaining-requests"] == str(BURST - 2)  # the other process saw the first
    rest = statuses(pair, "sk-one", 2 * BURST)
    assert rest == [200] * (BURST - 2) + [429] * (BURST + 2)
    assert sum(metric_sum(gw.metrics(), "aligngate_rate_limited_total", scope="key") for gw in pair) == BURST + 2


def test_redis_killed_fails_open_and_restarted_enforces_again(pair: tuple[Gateway, Gateway],
                                                              redis_server: LocalRedis) -> None:
    assert statuses(pair, "sk-two", BURST + 2) == [200] * BURST + [429] * 2
    redis_server.kill()
    try:
        started = time.monotonic()
        assert statuses(pair, "sk-two", 3 * BURST) == [200] * (3 * BURST)  # fail open
        assert time.monotonic() - started < 5
        unchecked = sum(metric_sum(gw.metrics(), "aligngate_rate_limit_errors_total", op="acquire") for gw in pair)
        assert unchecked == 3 * BURST
        for gw in pair:  # logged once for the outage so far, under the request that met it
            lines = wait_for(lambda gw=gw: gw.log_lines("requests pass unchecked"), 5, what="the outage logged")
            assert len(lines) == 1 and " rid=" in lines[0] and "redis://127.0.0.1" in lines[0]
    finally:
        redis_server.start()
    # Redis answers again (empty): each gateway notices within a second of its last failure
    for gw in pair:
        wait_for(lambda gw=gw: chat(gw, "sk-three") and gw.log_lines("answers again"), 10, interval=0.2,
                 what="the gateway back on Redis")
    assert statuses(pair, "sk-two", BURST + 2) == [200] * BURST + [429] * 2
