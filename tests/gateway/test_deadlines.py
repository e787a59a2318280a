"""gateway/deadlines.py: coarse deadlines, one sweeping task per loop that runs only while some are pending."""

from __future__ import annotations

import asyncio

from gateway import deadlines as deadlines_mod
from gateway.deadlines import TICK_S, deadlines


async def test_a_deadline_fires_once_within_a_tick_and_a_discarded_one_never() -> None:
    pending = deadlines()
    loop = asyncio.get_running_loop()
    fired: list[float] = []
    start = loop.time()
    pending.add("kept", 0.1, lambda: fired.append(loop.time() - start))
    pending.add("gone", 0.1, lambda: fired.append(-1.0))
    pending.discard("gone")
    await asyncio.sleep(0.1 + 2 * TICK_S)
    assert len(fired) == 1 and 0.1 <= fired[0] <= 0.1 + TICK_S + 0.1
    assert len(pending) == 0


async def test_the_sweeper_stops_when_nothing_is_pending_and_restarts() -> None:
    pending = deadlines()
    pending.add("a", 60, lambda: None)
    assert pending._task is not None
    pending.discard("a")
    await asyncio.sleep(TICK_S + 0.1)
    assert pending._task is None
    fired = asyncio.Event()
    pending.add("b", 0.01, fired.set)
    await asyncio.wait_for(fired.wait(), TICK_S + 1)


async def test_a_failing_callback_does_not_stop_the_others(caplog) -> None:  # type: ignore[no-untyped-def]
    pending = deadlines()
    fired = asyncio.Event()

    def boom() -> None:
        raise RuntimeError("boom")

    pending.add("boom", 0.01, boom)
    pending.add("fine", 0.01, fired.set)
    await asyncio.wait_for(fired.wait(), TICK_S + 1)
    assert "deadline" in caplog.text


def test_each_loop_has_its_own() -> None:
    async def mine() -> deadlines_mod.Deadlines:
        return deadlines()

    first = asyncio.run(mine())
    second = asyncio.run(mine())
    assert first is not second
