"""SIGHUP against a real ``aligngate serve``: the config file's API keys and rate limits swapped in by every worker
while a stream started before the signal runs to its end; a config that does not load changes nothing."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.e2e.support import Gateway, Procs, Stack, backend, gateway_config, sse_data, wait_for

CHAT = {"model": "alpha", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}


def chat(gw: Gateway, key: str) -> httpx.Response:
    # a new connection each time, so that both workers are asked
    return httpx.post(f"{gw.v1}/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {key}"},
                      timeout=10)


def rewrite(gw: Gateway, **server: Any) -> None:
    config = {**gw.config, "server": {**gw.config["server"], **server}}
    Path(gw.config_path).write_text(yaml.safe_dump(config), encoding="utf-8")


def test_sighup_swaps_keys_and_limits_in_every_worker_while_a_stream_finishes(stack: Stack, procs: Procs) -> None:
    config = gateway_config(backend("alpha", stack.a.v1), api_keys=["sk-old"],
                            rate_limits={"per_key": {"requests_per_minute": 1000}})
    gw = procs.gateway(config, tag="reload", workers=2)
    assert chat(gw, "sk-old").headers["x-ratelimit-limit-requests"] == "1000"
    body = {"model": "alpha", "stream": True, "messages": [{"role": "user", "content": "hi"}],
            "fake": {"n_words": 12, "token_delay_s": 0.25}}  # about 3 s of events
    streamed: list[bytes] = []
    status: list[int] = []
    first = threading.Event()

    def stream() -> None:
        with httpx.stream("POST", f"{gw.v1}/chat/completions", json=body, timeout=30,
                          headers={"Authorization": "Bearer sk-old"}) as resp:
            status.append(resp.status_code)
            for piece in resp.iter_bytes():
                streamed.append(piece)
                first.set()

    reader = threading.Thread(target=stream)
    reader.start()
    assert first.wait(10), "the stream did not start"
    rewrite(gw, api_keys=["sk-new"], rate_limits={"per_key": {"requests_per_minute": 7}})
    gw.send(signal.SIGHUP)
    lines = wait_for(lambda: len(gw.log_lines("SIGHUP: reloaded")) == 2 and gw.log_lines("SIGHUP: reloaded"), 10,
                     what="both workers reloaded")
    assert all("server.api_keys: 1 -> 1 keys (1 added, 1 removed)" in ln for ln in lines), lines
    assert all("server.rate_limits: per_key changed" in ln for ln in lines), lines
    assert not any("sk-new" in ln or "sk-old" in ln for ln in gw.log().splitlines())
    assert reader.is_alive(), "the stream ended before the reload: make it longer"
    for _ in range(6):
        assert chat(gw, "sk-old").status_code == 401
        fresh = chat(gw, "sk-new")
        assert fresh.status_code == 200, fresh.text
        assert fresh.headers["x-ratelimit-limit-requests"] == "7"
    reader.join(30)
    events = sse_data(b"".join(streamed))
    assert status == [200] and events[-1] == "[DONE]" and len(events) >= 12
    assert gw.returncode is None
    assert not gw.log_lines("Child process"), "a worker was restarted"


def test_a_config_that_does_not_load_keeps_the_current_keys(stack: Stack, procs: Procs) -> None:
    gw = procs.gateway(gateway_config(backend("alpha", stack.a.v1), api_keys=["sk-old"]), tag="reload-bad")
    Path(gw.config_path).write_text("server: {api_keys: [''], port: nope}\n", encoding="utf-8")
    gw.send(signal.SIGHUP)
    wait_for(lambda: gw.log_lines("does not load; keeping the current keys and limits"), 10,
             what="the bad config logged")
    assert chat(gw, "sk-old").status_code == 200
    # a valid one that only changes what takes a restart: said so, keys unchanged
    rewrite(gw, max_body_bytes=1000)
    gw.send(signal.SIGHUP)
    wait_for(lambda: gw.log_lines("changes to server.max_body_bytes take a restart"), 10, what="the ignored change")
    assert gw.log_lines("keys and rate limits unchanged")
    assert chat(gw, "sk-old").status_code == 200
    assert gw.returncode is None


def _workers(gw: Gateway) -> set[int]:
    """The worker processes of a supervising ``aligngate serve`` (multiprocessing spawn children)."""
    pids = set()
    for child in Path(f"/proc/{gw.pid}/task/{gw.pid}/children").read_text().split():
        try:
            if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                pids.add(int(child))
        except OSError:
            continue
    return pids


def test_a_killed_worker_is_replaced_and_the_replacement_reloads_on_sighup(stack: Stack, procs: Procs) -> None:
    gw = procs.gateway(gateway_config(backend("alpha", stack.a.v1), api_keys=["sk-old"]), tag="respawn", workers=2)
    first = wait_for(lambda: len(_workers(gw)) == 2 and _workers(gw), 20, what="two workers")
    victim = min(first)
    os.kill(victim, signal.SIGKILL)
    now = wait_for(lambda: (w := _workers(gw)) and len(w) == 2 and victim not in w and w, 20,
                   what="the killed worker replaced")
    assert len(now - first) == 1
    assert gw.log_lines(f"Child process [{victim}] died")
    for _ in range(6):
        assert chat(gw, "sk-old").status_code == 200
    # the supervisor's SIGHUP forwarding reaches the replacement too (once it is up, it reloads)
    rewrite(gw, api_keys=["sk-new"])

    def everyone_reloaded() -> bool:
        gw.send(signal.SIGHUP)
        time.sleep(0.3)
        return all(chat(gw, "sk-new").status_code == 200 for _ in range(12))

    wait_for(everyone_reloaded, 30, interval=0.5, what="every worker serving the new key")
    assert chat(gw, "sk-old").status_code == 401
    assert gw.returncode is None and _workers(gw) == now
