"""Graceful shutdown: SIGTERM lets in-flight streams finish, refuses new connections, exits with status 0;
a stream that never ends is cut at ``server.graceful_timeout_s``."""

from __future__ import annotations

import json
import signal
import threading
import time

import httpx
import pytest

from tests.e2e.support import Fake, Procs, backend, gateway_config, sse_data, wait_for


@pytest.fixture(scope="module")
def fake(module_procs: Procs) -> Fake:
    return module_procs.fake("replica-s")


def _refused(url: str) -> bool:
    try:
        httpx.get(url, timeout=1.0)
    except httpx.ConnectError:
        return True
    except httpx.HTTPError:
        return False
    return False


def test_sigterm_drains_stream_then_exits_zero(procs: Procs, fake: Fake) -> None:
    gw = procs.gateway(gateway_config(backend("s", fake.v1), graceful_timeout_s=20), tag="shutdown")
    body = {
        "model": "s", "messages": [{"role": "user", "content": "x"}], "stream": True,
        "fake": {"token_delay_s": 0.1, "n_words": 30},
    }
    first = threading.Event()
    raw: list[bytes] = []
    failure: list[BaseException] = []

    def read() -> None:
        try:
            with httpx.stream("POST", f"{gw.v1}/chat/completions", json=body, timeout=30) as resp:
                assert resp.status_code == 200
                for chunk in resp.iter_raw():
                    raw.append(chunk)
                    first.set()
        except BaseException as exc:
            failure.append(exc)
            first.set()

    reader = threading.Thread(target=read)
    reader.start()
    assert first.wait(10)
    gw.send(signal.SIGTERM)
    term_at = time.monotonic()
    # While the stream drains, the gateway no longer takes new connections.
    wait_for(lambda: _refused(f"{gw.url}/healthz"), timeout=3, what="new connections refused after SIGTERM")
    assert reader.is_alive(), "the stream ended before the drain was observed"
    reader.join(15)
    assert not reader.is_alive()
    assert not failure, failure
    events = sse_data(b"".join(raw))
    assert events[-1] == "[DONE]"
    text = "".join(json.loads(e)["choices"][0]["delta"].get("content") or "" for e in events[:-1])
    assert text == " ".join(f"w{i}" for i in range(30))
    assert gw.wait(10) == 0, gw.log()
    assert time.monotonic() - term_at < 10
    assert fake.stats()["streams_completed"] >= 1
    assert "Traceback" not in gw.log()


def test_sigterm_cuts_hung_stream_at_graceful_timeout(procs: Procs, fake: Fake) -> None:
    gw = procs.gateway(gateway_config(backend("s", fake.v1), graceful_timeout_s=0.5), tag="shutdown-hung")
    body = {
        "model": "s", "messages": [{"role": "user", "content": "x"}], "stream": True,
        "fake": {"mode": "hang", "delay_s": 60},
    }
    with httpx.stream("POST", f"{gw.v1}/chat/completions", json=body, timeout=30) as resp:
        chunks = resp.iter_raw()
        next(chunks)
        gw.send(signal.SIGTERM)
        term_at = time.monotonic()
        with pytest.raises(httpx.HTTPError):  # the server cancels the stream: the connection ends mid-body
            for _ in chunks:
                pass
    assert gw.wait(10) == 0, gw.log()
    assert time.monotonic() - term_at < 5
