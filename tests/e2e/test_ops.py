"""Operational routes: /healthz, /readyz (every backend has a replica up), /v1/models."""

from __future__ import annotations

import httpx

from tests.e2e.support import Procs, Stack, backend, gateway_config, wait_for


def test_healthz_and_readyz_all_up(stack: Stack) -> None:
    health = httpx.get(f"{stack.gw.url}/healthz", timeout=10)
    assert health.status_code == 200 and health.json() == {"status": "ok"}
    ready = httpx.get(f"{stack.gw.url}/readyz", timeout=10)
    assert ready.status_code == 200, ready.text
    assert ready.json() == {
        "status": "ready",
        "backends": {
            "alpha": {"ready": True, "replicas_up": 1, "replicas": 1},
            "beta": {"ready": True, "replicas_up": 1, "replicas": 1},
        },
    }


def test_models_route(stack: Stack) -> None:
    resp = httpx.get(f"{stack.gw.v1}/models", timeout=10)
    assert resp.status_code == 200
    body = resp.json()
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == ["alpha", "beta"]
    assert all(m["object"] == "model" for m in body["data"])


def test_readyz_follows_replicas_going_down_and_up(procs: Procs) -> None:
    r1 = procs.fake("ready-1")
    r2 = procs.fake("ready-2")
    solo = procs.fake("ready-solo")
    gw = procs.gateway(gateway_config(backend("two", r1.v1, r2.v1), backend("solo", solo.v1)), tag="readyz")

    def readyz() -> httpx.Response:
        return httpx.get(f"{gw.url}/readyz", timeout=15)

    resp = readyz()
    assert resp.status_code == 200
    assert resp.json()["backends"]["two"] == {"ready": True, "replicas_up": 2, "replicas": 2}

    port1 = r1.port
    r1.kill()
    resp = readyz()
    assert resp.status_code == 200  # one replica left is enough
    assert resp.json()["backends"]["two"] == {"ready": True, "replicas_up": 1, "replicas": 2}

    r2.kill()
    resp = readyz()
    assert resp.status_code == 503
    assert resp.json() == {
        "status": "not_ready",
        "backends": {
            "two": {"ready": False, "replicas_up": 0, "replicas": 2},
            "solo": {"ready": True, "replicas_up": 1, "replicas": 1},
        },
    }
    assert "Traceback" not in resp.text

    procs.fake("ready-1b", port1)
    wait_for(lambda: readyz().status_code == 200, timeout=10, what="/readyz back to 200")
