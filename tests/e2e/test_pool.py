"""The upstream pool: a replica killed mid-traffic, a replica that answers 503, ejection, probe-back.

Each test starts its own fakes and gateway, since it kills or breaks replicas.
"""

from __future__ import annotations

import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import openai

from tests.e2e.support import Procs, backend, gateway_config, metric_sum

_REPLICA_RE = re.compile(r"^Hello from (\S+)! You said: ")


def _replica_of(text: str | None) -> str:
    match = _REPLICA_RE.match(text or "")
    assert match, text
    return match.group(1)


def _ask(client: openai.OpenAI, content: str, **fake: object) -> str:
    completion = client.chat.completions.create(
        model="pool", messages=[{"role": "user", "content": content}], extra_body={"fake": fake} if fake else None
    )
    return _replica_of(completion.choices[0].message.content)


def test_replica_killed_mid_loop_every_request_succeeds(procs: Procs) -> None:
    p1 = procs.fake("pool-1")
    p2 = procs.fake("pool-2")
    gw = procs.gateway(gateway_config(backend("pool", p1.v1, p2.v1, eject_s=30)), tag="pool-kill")
    n_threads, per_thread, kill_after = 4, 15, 20
    done = 0
    lock = threading.Lock()
    killed = threading.Event()
    killed_at = 0.0
    results: list[tuple[float, str]] = []  # (start time, replica)

    def worker(k: int) -> None:
        nonlocal done, killed_at
        with gw.client() as client:
            for i in range(per_thread):
                started = time.monotonic()
                replica = _ask(client, f"t{k}-{i}", delay_s=0.02)
                with lock:
                    results.append((started, replica))
                    done += 1
                    kill_now = done == kill_after
                if kill_now:
                    p1.kill()
                    killed_at = time.monotonic()
                    killed.set()

    with ThreadPoolExecutor(n_threads) as pool:
        for future in [pool.submit(worker, k) for k in range(n_threads)]:
            future.result()  # re-raises any failed request

    assert killed.is_set()
    assert len(results) == n_threads * per_thread
    before = [r for t, r in results if t < killed_at]
    after = [r for t, r in results if t > killed_at]
    assert {"pool-1", "pool-2"} <= set(before), before  # both served while both were up
    assert len(after) >= 20, len(after)
    assert set(after) == {"pool-2"}, after
    assert "Traceback" not in gw.log()


def test_failing_replica_is_ejected_and_gets_no_more_traffic(procs: Procs) -> None:
    bad = procs.fake("pool-bad", 0, "--fail-status", "503")
    good = procs.fake("pool-good")
    gw = procs.gateway(gateway_config(backend("pool", bad.v1, good.v1, eject_after=3, eject_s=30)), tag="pool-503")
    with gw.client() as client:
        first = [_ask(client, f"r{i}") for i in range(10)]
        assert set(first) == {"pool-good"}
        assert len(bad.posts()) == 3  # eject_after consecutive 503s, then out of rotation
        rest = [_ask(client, f"s{i}") for i in range(20)]
        assert set(rest) == {"pool-good"}
    assert len(bad.posts()) == 3
    assert len(good.posts()) == 30
    samples = gw.metrics()
    assert metric_sum(samples, "aligngate_upstream_errors_total", model="pool", status="503") == 3
    assert metric_sum(samples, "aligngate_requests_total", model="pool", status="200") == 30
    assert "ejected" in gw.log()


def test_killed_replica_is_probed_back_after_restart(procs: Procs) -> None:
    p1 = procs.fake("pool-1")
    p2 = procs.fake("pool-2")
    gw = procs.gateway(gateway_config(backend("pool", p1.v1, p2.v1, eject_after=1, eject_s=0.5)), tag="pool-probe")
    with gw.client() as client:
        assert {_ask(client, f"warm{i}") for i in range(4)} == {"pool-1", "pool-2"}
        port = p1.port
        p1.kill()
        assert {_ask(client, f"down{i}") for i in range(6)} == {"pool-2"}
        assert "ejected" in gw.log()
        p1_again = procs.fake("pool-1b", port)
        restarted = time.monotonic()
        while _ask(client, "back?") != "pool-1b":  # every request must succeed meanwhile
            assert time.monotonic() - restarted < 15, "the restarted replica was never probed back"
            time.sleep(0.1)
        back_after = time.monotonic() - restarted
        # Back in rotation: it takes its share again.
        served = [_ask(client, f"after{i}") for i in range(10)]
    assert {"pool-1b", "pool-2"} <= set(served), served
    assert len(p1_again.posts()) >= 2
    assert back_after < 10, back_after
