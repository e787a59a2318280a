"""gateway/upstream/pool.py: selection, ejection, cool-down and probe-back, without sockets."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import pytest

from gateway.upstream.pool import MAX_EJECT_S, Replica, ReplicaPool

URLS = ["http://a/v1", "http://b/v1", "http://c/v1"]


def _pool(n: int = 3, **kw: object) -> ReplicaPool:
    kw.setdefault("eject_after", 3)
    kw.setdefault("eject_s", 10.0)
    return ReplicaPool("m", URLS[:n], **kw)  # type: ignore[arg-type]


async def _until(cond, limit_s: float = 2.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + limit_s
    while not cond():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.002)


def test_replicas_built_from_urls() -> None:
    pool = _pool()
    assert [(r.url, r.index, r.in_flight, r.healthy) for r in pool.replicas] == [
        ("http://a/v1", 0, 0, True), ("http://b/v1", 1, 0, True), ("http://c/v1", 2, 0, True)
    ]
    assert pool.healthy_count == 3
    assert MAX_EJECT_S == 300.0


def test_no_urls_is_an_error() -> None:
    with pytest.raises(ValueError, match="no replica URLs"):
        ReplicaPool("m", [], eject_after=1, eject_s=1)


def test_replica_identity_equality() -> None:
    a, b = Replica("http://x", 0), Replica("http://x", 0)
    assert a != b
    assert a == a


def test_least_in_flight_wins() -> None:
    pool = _pool()
    a, b, c = pool.replicas
    a.in_flight, b.in_flight, c.in_flight = 4, 1, 2
    for _ in range(10):
        assert pool.pick() is b
    b.in_flight = 5
    assert all(pool.pick() is c for _ in range(10))


def test_ties_are_broken_round_robin() -> None:
    pool = _pool()
    picks = Counter(pool.pick().index for _ in range(300))  # type: ignore[union-attr]
    assert picks == {0: 100, 1: 100, 2: 100}
    pool.replicas[2].in_flight = 1
    picks = Counter(pool.pick().index for _ in range(100))  # type: ignore[union-attr]
    assert set(picks) == {0, 1}
    assert min(picks.values()) >= 30


def test_consecutive_picks_differ_among_ties() -> None:
    pool = _pool(2)
    seq = [pool.pick().index for _ in range(6)]  # type: ignore[union-attr]
    assert seq in ([0, 1, 0, 1, 0, 1], [1, 0, 1, 0, 1, 0])


def test_exclude() -> None:
    pool = _pool()
    a, b, c = pool.replicas
    for _ in range(20):
        assert pool.pick(exclude=[a, b]) is c
    assert {pool.pick(exclude=[b]).index for _ in range(20)} == {0, 2}  # type: ignore[union-attr]
    assert pool.pick(exclude=[a, b, c]) is None


def test_exclude_beats_least_in_flight() -> None:
    pool = _pool()
    a, b, c = pool.replicas
    b.in_flight, c.in_flight = 5, 9
    assert pool.pick(exclude=[a]) is b


async def test_ejected_replicas_are_skipped() -> None:
    pool = _pool(eject_after=1)
    b = pool.replicas[1]
    pool.record_failure(b, "HTTP 503")
    assert not b.healthy
    b.in_flight = -10  # even a much less busy ejected replica is not chosen over healthy ones
    assert {pool.pick().index for _ in range(30)} == {0, 2}  # type: ignore[union-attr]
    assert pool.healthy_count == 2
    await pool.close()


async def test_all_ejected_falls_back_to_the_one_ejected_longest_ago() -> None:
    pool = _pool(eject_after=1)
    a, b, c = pool.replicas
    pool.record_failure(b, "x")
    pool.record_failure(c, "x")
    pool.record_failure(a, "x")
    b.ejected_at, c.ejected_at, a.ejected_at = 100.0, 200.0, 300.0
    assert pool.healthy_count == 0
    assert all(pool.pick() is b for _ in range(10))
    assert pool.pick(exclude=[b]) is c
    assert pool.pick(exclude=[b, c]) is a
    assert pool.pick(exclude=[a, b, c]) is None
    await pool.close()


async def test_healthy_replica_preferred_over_excluded_fallback() -> None:
    pool = _pool(eject_after=1)
    a, b, c = pool.replicas
    pool.record_failure(a, "x")
    assert pool.pick(exclude=[b]) is c
    assert pool.pick(exclude=[b, c]) is a  # only the ejected one left: still tried
    await pool.close()


async def test_eject_after_consecutive_failures() -> None:
    pool = _pool(eject_after=3)
    r = pool.replicas[0]
    pool.record_failure(r, "x")
    pool.record_failure(r, "x")
    assert r.healthy and r.consecutive_failures == 2
    before = time.monotonic()
    pool.record_failure(r, "HTTP 503")
    assert not r.healthy
    assert r.ejections == 1
    assert before <= r.ejected_at <= time.monotonic()
    await pool.close()


async def test_success_resets_the_failure_count() -> None:
    pool = _pool(eject_after=3)
    r = pool.replicas[0]
    pool.record_failure(r, "x")
    pool.record_failure(r, "x")
    pool.record_success(r)
    assert r.consecutive_failures == 0
    pool.record_failure(r, "x")
    pool.record_failure(r, "x")
    assert r.healthy
    pool.record_failure(r, "x")
    assert not r.healthy
    await pool.close()


def test_cooldown_doubles_per_ejection_and_is_capped() -> None:
    pool = _pool(eject_s=1.5, max_eject_s=10.0)
    r = pool.replicas[0]
    expected = {0: 1.5, 1: 1.5, 2: 3.0, 3: 6.0, 4: 10.0, 5: 10.0, 50: 10.0}
    for ejections, cooldown in expected.items():
        r.ejections = ejections
        assert pool.cooldown(r) == cooldown
    default_cap = _pool(eject_s=10.0)
    r2 = default_cap.replicas[0]
    r2.ejections = 30
    assert default_cap.cooldown(r2) == MAX_EJECT_S


async def test_probe_reinstates_on_success() -> None:
    calls: list[int] = []

    async def probe(replica: Replica) -> bool:
        calls.append(replica.index)
        return True

    pool = _pool(eject_after=1, eject_s=0.01, probe=probe)
    r = pool.replicas[1]
    pool.record_failure(r, "x")
    assert not r.healthy
    assert r._probe_task is not None
    await _until(lambda: r.healthy)
    assert calls == [1]
    assert r.ejections == 0 and r.consecutive_failures == 0
    await _until(lambda: r._probe_task is None)
    await pool.close()


async def test_probe_keeps_probing_with_backoff_on_failure() -> None:
    cooldowns: list[float] = []
    results = iter([False, False, False, True])

    pool: ReplicaPool

    async def probe(replica: Replica) -> bool:
        cooldowns.append(pool.cooldown(replica))
        return next(results)

    pool = _pool(eject_after=1, eject_s=0.01, probe=probe)
    r = pool.replicas[0]
    pool.record_failure(r, "x")
    await _until(lambda: r.healthy)
    assert cooldowns == [0.01, 0.02, 0.04, 0.08]
    assert r.ejections == 0
    await pool.close()


async def test_probe_that_raises_counts_as_failure() -> None:
    calls = 0

    async def probe(replica: Replica) -> bool:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise RuntimeError("probe blew up")
        return True

    pool = _pool(eject_after=1, eject_s=0.005, probe=probe)
    r = pool.replicas[0]
    pool.record_failure(r, "x")
    await _until(lambda: r.healthy)
    assert calls == 3
    await pool.close()


async def test_without_probe_a_replica_stays_ejected_until_it_serves() -> None:
    pool = _pool(eject_after=1, eject_s=0.001)
    r = pool.replicas[0]
    pool.record_failure(r, "x")
    assert r._probe_task is None
    await asyncio.sleep(0.02)
    assert not r.healthy
    pool.record_success(r)
    assert r.healthy


async def test_record_success_on_an_ejected_replica_reinstates_it() -> None:
    probe_started = asyncio.Event()

    async def probe(replica: Replica) -> bool:
        probe_started.set()
        return False

    pool = _pool(eject_after=2, eject_s=60.0, probe=probe)
    r = pool.replicas[2]
    pool.record_failure(r, "x")
    pool.record_failure(r, "x")
    task = r._probe_task
    assert task is not None and not r.healthy
    pool.record_success(r)
    assert r.healthy
    assert r.consecutive_failures == 0 and r.ejections == 0
    assert r._probe_task is None
    await asyncio.sleep(0)
    assert task.cancelled() or task.done()
    assert not probe_started.is_set()
    # back in rotation: chosen among ties again
    assert 2 in {pool.pick().index for _ in range(6)}  # type: ignore[union-attr]
    await pool.close()


async def test_failures_while_ejected_do_not_start_a_second_probe() -> None:
    async def probe(replica: Replica) -> bool:
        return False

    pool = _pool(eject_after=1, eject_s=60.0, probe=probe)
    r = pool.replicas[0]
    pool.record_failure(r, "x")
    task = r._probe_task
    pool.record_failure(r, "x")
    pool.record_failure(r, "x")
    assert r._probe_task is task
    assert r.ejections == 1
    await pool.close()


async def test_reejection_after_reinstatement_starts_from_the_base_cooldown() -> None:
    pool = _pool(eject_after=1, eject_s=2.0)
    r = pool.replicas[0]
    pool.record_failure(r, "x")
    r.ejections = 4
    pool.record_success(r)
    pool.record_failure(r, "x")
    assert r.ejections == 1
    assert pool.cooldown(r) == 2.0


async def test_close_cancels_probe_tasks() -> None:
    async def probe(replica: Replica) -> bool:
        return False

    pool = _pool(eject_after=1, eject_s=60.0, probe=probe)
    a, b, _ = pool.replicas
    pool.record_failure(a, "x")
    pool.record_failure(b, "x")
    tasks = [a._probe_task, b._probe_task]
    await asyncio.sleep(0.01)  # the probe loops are now sleeping out their cool-down
    assert all(t is not None and not t.done() for t in tasks)
    await pool.close()
    assert all(t is not None and t.cancelled() for t in tasks)
    await pool.close()  # idempotent
