"""gateway/ratelimit/buckets.py: token buckets in memory, with a clock the test moves."""

from __future__ import annotations

import pytest

from gateway.ratelimit.buckets import Charge, Limit, MemoryBuckets


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


PER_SECOND = Limit(per_minute=60, burst=3)  # one a second, three at once


async def test_a_bucket_starts_full_and_refills_at_its_rate(clock: Clock) -> None:
    buckets = MemoryBuckets(clock=clock)
    for left in (2, 1, 0):
        decision = await buckets.acquire([Charge(("k",), PER_SECOND, 1)])
        assert decision.allowed
        assert decision.states[0].remaining == left
    refused = await buckets.acquire([Charge(("k",), PER_SECOND, 1)])
    assert not refused.allowed and refused.refused == 0
    assert refused.retry_after_s == pytest.approx(1.0)
    assert refused.states[0].full_in_s == pytest.approx(3.0)
    clock.now += 1.0
    assert (await buckets.acquire([Charge(("k",), PER_SECOND, 1)])).allowed
    clock.now += 100  # never above the burst
    assert (await buckets.acquire([Charge(("k",), PER_SECOND, 1)])).states[0].remaining == 2


async def test_charges_are_all_or_nothing(clock: Clock) -> None:
    buckets = MemoryBuckets(clock=clock)
    small = Limit(per_minute=60, burst=1)
    assert (await buckets.acquire([Charge(("a",), PER_SECOND, 1), Charge(("b",), small, 1)])).allowed
    refused = await buckets.acquire([Charge(("a",), PER_SECOND, 1), Charge(("b",), small, 1)])
    assert refused.refused == 1
    # the first bucket was not charged by the refused request
    assert (await buckets.acquire([Charge(("a",), PER_SECOND, 1)])).states[0].remaining == 1


async def test_a_charge_larger_than_the_burst_passes_only_on_a_full_bucket_and_leaves_a_debt(clock: Clock) -> None:
    buckets = MemoryBuckets(clock=clock)
    tokens = Limit(per_minute=600, burst=100)  # 10 a second
    decision = await buckets.acquire([Charge(("t",), tokens, 250)])
    assert decision.allowed and decision.states[0].remaining == -150
    refused = await buckets.acquire([Charge(("t",), tokens, 1)])
    assert not refused.allowed and refused.retry_after_s == pytest.approx(15.1)
    clock.now += 10  # -50: a large charge waits for a full bucket
    assert not (await buckets.acquire([Charge(("t",), tokens, 250)])).allowed
    clock.now += 15  # full (100) again
    assert (await buckets.acquire([Charge(("t",), tokens, 250)])).allowed


async def test_adjust_gives_back_or_takes_more(clock: Clock) -> None:
    buckets = MemoryBuckets(clock=clock)
    tokens = Limit(per_minute=6000, burst=1000)
    await buckets.acquire([Charge(("t",), tokens, 800)])
    await buckets.adjust([Charge(("t",), tokens, 800)], 700)  # reserved 800, used 100
    assert (await buckets.acquire([Charge(("t",), tokens, 0)])).states[0].remaining == 900
    await buckets.adjust([Charge(("t",), tokens, 800)], -50)  # used more than reserved
    assert (await buckets.acquire([Charge(("t",), tokens, 0)])).states[0].remaining == 850
    await buckets.adjust([Charge(("t",), tokens, 800)], 10_000)  # never above the burst
    assert (await buckets.acquire([Charge(("t",), tokens, 0)])).states[0].remaining == 1000


async def test_the_least_recently_used_buckets_are_forgotten_beyond_max_tracked(clock: Clock) -> None:
    buckets = MemoryBuckets(max_tracked=100, clock=clock)
    one = Limit(per_minute=1, burst=1)
    for i in range(150):
        assert (await buckets.acquire([Charge((str(i),), one, 1)])).allowed
    assert len(buckets) == 100
    assert (await buckets.acquire([Charge(("0",), one, 1)])).allowed  # forgotten: starts full again
    assert not (await buckets.acquire([Charge(("149",), one, 1)])).allowed  # still tracked
