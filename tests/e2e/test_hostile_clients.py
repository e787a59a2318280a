"""Slow and hostile clients, over real sockets against a real ``aligngate serve``: a body that stalls (408), headers
that stall or never end (408, 431), idle connections (closed), and a cap on concurrent requests (503 with
``Retry-After``). Each refusal is answered in the OpenAI shape where an answer is possible, counted in
``aligngate_rejected_total{reason}`` and logged."""

from __future__ import annotations

import json
import socket
import threading
import time
from typing import Any

import httpx
import pytest

from tests.e2e.support import HOST, Gateway, Procs, Stack, assert_openai_error, backend, gateway_config, metric_sum

TIMEOUT_S = 1.0
MAX_HEADER_BYTES = 4096
CHAT = {"model": "alpha", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module")
def gw(stack: Stack, module_procs: Procs) -> Gateway:
    config = gateway_config(
        backend("alpha", stack.a.v1),
        body_timeout_s=TIMEOUT_S, header_timeout_s=TIMEOUT_S, max_header_bytes=MAX_HEADER_BYTES,
        keep_alive_timeout_s=1, max_concurrent_requests=2,
    )
    return module_procs.gateway(config, tag="hostile")


def _connect(gw: Gateway) -> socket.socket:
    sock = socket.create_connection((HOST, gw.port), timeout=10)
    return sock


def _read_all(sock: socket.socket, limit_s: float = 10.0) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and how long that took."""
    start = time.monotonic()
    sock.settimeout(limit_s)
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    return data, time.monotonic() - start


def _response(raw: bytes) -> tuple[int, dict[str, str], Any]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    return status, headers, json.loads(body) if body else None


def _rejected(gw: Gateway, reason: str) -> float:
    return metric_sum(gw.metrics(), "aligngate_rejected_total", reason=reason)


def test_a_body_that_stalls_is_a_408_and_the_connection_is_closed(gw: Gateway, stack: Stack) -> None:
    before, posts = _rejected(gw, "body_timeout"), len(stack.a.posts())
    body = json.dumps(CHAT).encode()
    with _connect(gw) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"X-Request-Id: stall-body-1\r\nContent-Length: %d\r\n\r\n" % len(body) + body[:10])
        raw, waited = _read_all(sock)
    assert TIMEOUT_S * 0.8 <= waited < TIMEOUT_S + 3
    status, headers, data = _response(raw)
    assert status == 408
    assert headers["connection"] == "close"
    assert data["error"]["code"] == "request_timeout" and data["error"]["type"] == "invalid_request_error"
    assert set(data["error"]) == {"message", "type", "param", "code"}
    line = gw.wait_access_line("stall-body-1")
    assert " 408 " in line and "outcome=request_timeout" in line
    assert _rejected(gw, "body_timeout") - before == 1
    assert metric_sum(gw.metrics(), "aligngate_requests_total", status="408") >= 1
    assert len(stack.a.posts()) == posts  # nothing went upstream


def test_headers_that_stall_are_a_408(gw: Gateway) -> None:
    before = _rejected(gw, "header_timeout")
    with _connect(gw) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Ty")
        raw, waited = _read_all(sock)
    assert TIMEOUT_S * 0.8 <= waited < TIMEOUT_S + 3
    status, headers, data = _response(raw)
    assert status == 408 and headers["connection"] == "close"
    assert data["error"]["code"] == "request_timeout"
    assert _rejected(gw, "header_timeout") - before == 1
    assert any("outcome=header_timeout" in ln for ln in gw.log_lines("aligngate.access"))


def test_a_silent_new_connection_is_closed(gw: Gateway) -> None:
    before = _rejected(gw, "header_timeout")
    with _connect(gw) as sock:
        raw, waited = _read_all(sock)
    assert raw == b""
    assert TIMEOUT_S * 0.8 <= waited < TIMEOUT_S + 3
    assert _rejected(gw, "header_timeout") - before == 1


def test_a_slow_but_steady_client_is_cut_off_at_the_header_deadline(gw: Gateway) -> None:
    with _connect(gw) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\n")
        start = time.monotonic()
        try:
            for i in range(40):  # a header line every 0.1 s: never idle, never done
                sock.sendall(b"X-Drip-%d: y\r\n" % i)
                time.sleep(0.1)
        except OSError:
            pass
        raw, _ = _read_all(sock)
    assert time.monotonic() - start < TIMEOUT_S + 3
    assert _response(raw)[0] == 408


@pytest.mark.parametrize("complete", [True, False], ids=["large-headers", "header-without-end"])
def test_oversized_headers_are_a_431(gw: Gateway, complete: bool) -> None:
    before = _rejected(gw, "header_too_large")
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (MAX_HEADER_BYTES + 100)
    with _connect(gw) as sock:
        sock.sendall(head + (b"\r\n\r\n" if complete else b""))
        raw, waited = _read_all(sock)
    assert waited < TIMEOUT_S * 0.8  # refused at once, not at the header deadline
    status, headers, data = _response(raw)
    assert status == 431 and headers["connection"] == "close"
    assert data["error"]["code"] == "request_header_fields_too_large"
    assert _rejected(gw, "header_too_large") - before == 1


def _responses(raw: bytes) -> list[tuple[int, dict[str, str], Any]]:
    """The responses sent one after the other on one connection (each with a ``content-length``)."""
    out = []
    while raw:
        head, _, rest = raw.partition(b"\r\n\r\n")
        status, headers, _ = _response(head + b"\r\n\r\n")
        size = int(headers["content-length"])
        out.append((status, headers, json.loads(rest[:size]) if size else None))
        raw = rest[size:]
    return out


@pytest.mark.parametrize("before", [1, 2], ids=["one-good", "two-good"])
@pytest.mark.parametrize("complete", [True, False], ids=["large-headers", "header-without-end"])
def test_pipelined_oversized_headers_after_good_requests_are_a_431_once_those_are_answered(
    gw: Gateway, complete: bool, before: int
) -> None:
    rejected = _rejected(gw, "header_too_large")
    body = json.dumps({**CHAT, "max_tokens": 4}).encode()
    good = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body) + body)
    big = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (MAX_HEADER_BYTES + 100)
    with _connect(gw) as sock:
        sock.sendall(good * before + big + (b"\r\n\r\n" if complete else b""))  # one write: pipelined
        raw, waited = _read_all(sock)
    assert waited < TIMEOUT_S * 0.8  # refused at once, not at the header deadline
    answers = _responses(raw)
    assert [status for status, _, _ in answers] == [200] * before + [431], raw
    for _, headers, data in answers[:-1]:  # answered normally
        assert headers.get("connection") != "close" and data["object"] == "chat.completion"
    _, headers, data = answers[-1]
    assert headers["connection"] == "close" and data["error"]["code"] == "request_header_fields_too_large"
    assert _rejected(gw, "header_too_large") - rejected == 1


def test_headers_under_the_limit_are_served(gw: Gateway) -> None:
    r = httpx.get(f"{gw.url}/healthz", headers={"X-Fine": "a" * (MAX_HEADER_BYTES // 2)}, timeout=10)
    assert r.status_code == 200


def test_an_idle_keep_alive_connection_is_closed(gw: Gateway) -> None:
    with _connect(gw) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        raw, waited = _read_all(sock)  # the answer, then the close
    status, _, data = _response(raw)
    assert status == 200 and data == {"status": "ok"}
    assert 1 * 0.8 <= waited < 1 + 3  # server.keep_alive_timeout_s: 1


def test_concurrent_requests_beyond_the_cap_are_a_503_with_retry_after(gw: Gateway) -> None:
    before = _rejected(gw, "concurrency")
    results: list[httpx.Response] = []

    def slow() -> None:
        body = {**CHAT, "fake": {"delay_s": 2}}
        results.append(httpx.post(f"{gw.v1}/chat/completions", json=body, timeout=30))

    threads = [threading.Thread(target=slow) for _ in range(2)]
    for t in threads:
        t.start()
    time.sleep(0.7)  # both slots taken
    busy = httpx.post(f"{gw.v1}/chat/completions", json=CHAT, timeout=10)
    err = assert_openai_error(busy, 503, code="gateway_overloaded", type_="overloaded_error")
    assert "2" in err["message"]
    assert busy.headers["retry-after"] == "1"
    assert httpx.get(f"{gw.url}/healthz", timeout=5).status_code == 200  # health and metrics are not capped
    assert "outcome=gateway_overloaded" in gw.wait_access_line(busy.headers["x-request-id"])
    for t in threads:
        t.join(30)
    assert [r.status_code for r in results] == [200, 200]
    assert httpx.post(f"{gw.v1}/chat/completions", json=CHAT, timeout=10).status_code == 200  # slots freed
    assert _rejected(gw, "concurrency") - before == 1
