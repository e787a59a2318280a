"""Prometheus metrics (one worker and two), and the access log: one line per request, no prompt text."""

from __future__ import annotations

import re
import uuid

import httpx
import openai
import pytest

from tests.e2e.support import Procs, Stack, backend, gateway_config, metric_sum, wait_for

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return metric_sum(after, name, **labels) - metric_sum(before, name, **labels)


def test_metrics_after_traffic(stack: Stack, client: openai.OpenAI) -> None:
    gw = stack.gw
    before = gw.metrics()
    for i in range(3):
        client.chat.completions.create(model="alpha", messages=[{"role": "user", "content": f"m{i}"}])
    for i in range(2):
        list(client.chat.completions.create(model="alpha", messages=[{"role": "user", "content": f"s{i}"}],
                                            stream=True))
    client.completions.create(model="beta", prompt="b")
    resp = httpx.post(f"{gw.v1}/chat/completions", json={"model": "nope", "messages": [{"role": "user",
                                                                                          "content": "x"}]})
    assert resp.status_code == 404
    after = gw.metrics()

    control = {"arm": "control"}
    assert _delta(before, after, "aligngate_requests_total", model="alpha", status="200", **control) == 5
    assert _delta(before, after, "aligngate_requests_total", model="beta", status="200", **control) == 1
    assert _delta(before, after, "aligngate_requests_total", status="404") == 1
    # The labels are exactly model, arm, status.
    keys = [dict(lbl) for (n, lbl) in after if n == "aligngate_requests_total"]
    assert {"model": "alpha", "arm": "control", "status": "200"} in keys
    for hist in ("aligngate_request_duration_seconds", "aligngate_ttft_seconds", "aligngate_overhead_seconds"):
        assert _delta(before, after, f"{hist}_count", model="alpha", **control) == 5, hist
        assert _delta(before, after, f"{hist}_bucket", model="alpha", le="+Inf", **control) == 5, hist
        assert metric_sum(after, f"{hist}_sum", model="alpha", **control) > 0, hist
    # Overhead is a small part of the duration.
    assert _delta(before, after, "aligngate_overhead_seconds_sum", model="alpha") < _delta(
        before, after, "aligngate_request_duration_seconds_sum", model="alpha")
    assert metric_sum(after, "aligngate_in_flight", model="alpha") == 0
    assert ("aligngate_in_flight", frozenset({("model", "alpha")})) in after


def test_in_flight_gauge_counts_an_open_stream(stack: Stack) -> None:
    body = {
        "model": "beta", "messages": [{"role": "user", "content": "x"}], "stream": True,
        "fake": {"n_words": 10, "token_delay_s": 0.1},
    }
    with httpx.stream("POST", f"{stack.gw.v1}/chat/completions", json=body, timeout=30) as resp:
        chunks = resp.iter_raw()  # keep the iterator: dropping it would close the connection
        raw = next(chunks)
        assert metric_sum(stack.gw.metrics(), "aligngate_in_flight", model="beta") == 1
        raw += b"".join(chunks)
    assert raw.endswith(b"data: [DONE]\n\n")
    assert raw.count(b"\n\n") == 13  # role, 10 words, finish, [DONE]: the stream ran to its end
    wait_for(lambda: metric_sum(stack.gw.metrics(), "aligngate_in_flight", model="beta") == 0, timeout=5,
             what="in-flight gauge back to 0")


def test_upstream_errors_counted(stack: Stack, client: openai.OpenAI) -> None:
    gw = stack.gw
    before = gw.metrics()
    stream = client.chat.completions.create(model="alpha", messages=[{"role": "user", "content": "x"}], stream=True,
                                            extra_body={"fake": {"mode": "cut"}})
    with pytest.raises(openai.APIError):
        list(stream)
    resp = httpx.post(f"{gw.v1}/chat/completions", json={
        "model": "alpha", "messages": [{"role": "user", "content": "x"}], "fake": {"mode": "error", "status": 500}})
    assert resp.status_code == 500
    after = gw.metrics()
    assert _delta(before, after, "aligngate_upstream_errors_total", model="alpha", status="stream_broken") == 1
    assert _delta(before, after, "aligngate_upstream_errors_total", model="alpha", status="500") == 1
    assert _delta(before, after, "aligngate_requests_total", model="alpha", status="500") == 1


def test_access_log_one_line_per_request_without_prompt(stack: Stack, client: openai.OpenAI) -> None:
    gw = stack.gw
    secret = f"PROMPT-SECRET-{uuid.uuid4().hex}"
    ids = {kind: f"e2e-{kind}-{uuid.uuid4().hex}" for kind in ("plain", "stream", "bad", "completion")}
    client.chat.completions.create(model="alpha", messages=[{"role": "user", "content": secret}],
                                   extra_headers={"X-Request-Id": ids["plain"]})
    list(client.chat.completions.create(model="alpha", messages=[{"role": "user", "content": secret}], stream=True,
                                        extra_headers={"X-Request-Id": ids["stream"]}))
    client.completions.create(model="beta", prompt=secret, extra_headers={"X-Request-Id": ids["completion"]})
    bad = httpx.post(f"{gw.v1}/chat/completions", json={"model": "alpha", "messages": secret},
                     headers={"X-Request-Id": ids["bad"]})
    assert bad.status_code == 400
    for kind, rid in ids.items():
        line = gw.wait_access_line(rid)
        assert len(gw.access_lines(rid)) == 1, kind
        status = "400" if kind == "bad" else "200"
        assert re.search(rf'"POST /v1/(chat/)?completions" {status} ', line), line
    assert "stream=1" in gw.access_lines(ids["stream"])[0]
    assert len(gw.log_lines(ids["plain"])) == 1  # nothing else logs the request id either
    assert secret not in gw.log()


def test_two_workers_metrics_add_up(procs: Procs) -> None:
    fake = procs.fake("multi")
    gw = procs.gateway(gateway_config(backend("multi", fake.v1)), workers=2, tag="workers2")
    n = 40
    ids = []
    for i in range(n):
        rid = f"e2e-w-{i}-{uuid.uuid4().hex}"
        ids.append(rid)
        stream = i % 4 == 0
        with httpx.Client(timeout=30) as http:  # a fresh connection each time, so both workers get some
            resp = http.post(f"{gw.v1}/chat/completions", headers={"X-Request-Id": rid},
                             json={"model": "multi", "messages": [{"role": "user", "content": f"q{i}"}],
                                   "stream": stream})
        assert resp.status_code == 200
        assert resp.headers["x-request-id"] == rid
    assert len(fake.posts()) == n

    pids = set()
    for rid in ids:
        line = gw.wait_access_line(rid)
        pids.add(re.search(r"\[(\d+)\] aligngate\.access", line).group(1))  # type: ignore[union-attr]
    assert len(pids) == 2, f"every request was served by one worker: {pids}"

    for _ in range(4):  # whichever worker answers /metrics, the totals are the same
        samples = gw.metrics()
        assert metric_sum(samples, "aligngate_requests_total", model="multi") == n
        assert metric_sum(samples, "aligngate_requests_total", model="multi", arm="control", status="200") == n
        assert metric_sum(samples, "aligngate_request_duration_seconds_count", model="multi") == n
        assert metric_sum(samples, "aligngate_ttft_seconds_count", model="multi") == n
        assert metric_sum(samples, "aligngate_in_flight", model="multi") == 0
