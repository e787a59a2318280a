"""gateway/metrics.py: what each hook records, read back from the default registry."""

from __future__ import annotations

import uuid

from prometheus_client import REGISTRY

from gateway import metrics
from gateway.context import RequestContext


def _model() -> str:
    return f"metrics-{uuid.uuid4().hex[:8]}"  # fresh label values: no interference between tests


def _get(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_request_finished_counts_with_labels() -> None:
    model = _model()
    ctx = RequestContext(request_id="r", started=0.0, model=model, arm="rewrite", first_byte_s=0.003)
    metrics.request_finished(ctx, 200, 0.4, 0.0007)
    metrics.request_finished(ctx, 200, 0.2, 0.0002)
    metrics.request_finished(ctx, 502, 1.0, 0.0001)
    assert _get("aligngate_requests_total", model=model, arm="rewrite", status="200") == 2.0
    assert _get("aligngate_requests_total", model=model, arm="rewrite", status="502") == 1.0
    assert _get("aligngate_requests_total", model=model, arm="control", status="200") == 0.0
    assert _get("aligngate_request_duration_seconds_count", model=model, arm="rewrite") == 3.0
    assert abs(_get("aligngate_request_duration_seconds_sum", model=model, arm="rewrite") - 1.6) < 1e-9
    assert _get("aligngate_request_duration_seconds_bucket", model=model, arm="rewrite", le="0.25") == 1.0
    assert _get("aligngate_overhead_seconds_count", model=model, arm="rewrite") == 3.0
    assert _get("aligngate_overhead_seconds_bucket", model=model, arm="rewrite", le="0.0005") == 2.0
    # time to first byte only for answers below 400
    assert _get("aligngate_ttft_seconds_count", model=model, arm="rewrite") == 2.0
    assert abs(_get("aligngate_ttft_seconds_sum", model=model, arm="rewrite") - 0.006) < 1e-9


def test_request_finished_before_the_model_is_known() -> None:
    before = _get("aligngate_requests_total", model="unknown", arm="none", status="400")
    ctx = RequestContext(request_id="r", started=0.0)
    metrics.request_finished(ctx, 400, 0.01, 0.01)
    assert _get("aligngate_requests_total", model="unknown", arm="none", status="400") - before == 1.0


def test_no_ttft_without_a_first_byte() -> None:
    model = _model()
    metrics.request_finished(RequestContext(request_id="r", started=0.0, model=model, arm="control"), 200, 1, 0)
    assert _get("aligngate_ttft_seconds_count", model=model, arm="control") == 0.0
    assert _get("aligngate_requests_total", model=model, arm="control", status="200") == 1.0


def test_in_flight_gauge() -> None:
    model = _model()
    a = RequestContext(request_id="a", started=0.0, model=model)
    b = RequestContext(request_id="b", started=0.0, model=model)
    metrics.request_started(a)
    metrics.request_started(a)  # counted once
    metrics.request_started(b)
    assert a.in_flight_counted is True
    assert _get("aligngate_in_flight", model=model) == 2.0
    metrics.request_finished(a, 200, 0.1, 0.0)
    assert _get("aligngate_in_flight", model=model) == 1.0
    metrics.request_finished(b, 499, 0.1, 0.0)
    assert _get("aligngate_in_flight", model=model) == 0.0


def test_request_started_without_a_model_is_not_counted() -> None:
    ctx = RequestContext(request_id="r", started=0.0)
    metrics.request_started(ctx)
    assert ctx.in_flight_counted is False


def test_count_upstream_error() -> None:
    model = _model()
    metrics.count_upstream_error(model, "503")
    metrics.count_upstream_error(model, "503")
    metrics.count_upstream_error(model, "connect_error")
    assert _get("aligngate_upstream_errors_total", model=model, status="503") == 2.0
    assert _get("aligngate_upstream_errors_total", model=model, status="connect_error") == 1.0


def test_render() -> None:
    model = _model()
    metrics.count_upstream_error(model, "timeout")
    body, content_type = metrics.render()
    assert content_type.startswith("text/plain")
    assert f'aligngate_upstream_errors_total{{model="{model}",status="timeout"}} 1.0'.encode() in body
    assert metrics.MULTIPROCESS is False


async def test_app_request_updates_the_metrics(gateway, start_upstream) -> None:  # type: ignore[no-untyped-def]
    from aiohttp import web

    async def chat(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def unavailable(request: web.Request) -> web.Response:
        return web.json_response({"error": {"message": "busy"}}, status=503)

    good = await start_upstream({"POST /v1/chat/completions": chat})
    bad = await start_upstream({"POST /v1/chat/completions": unavailable})
    model = _model()
    body = {"model": model, "messages": [{"role": "user", "content": "x"}]}
    backend = {"name": model, "urls": [bad.url, good.url], "eject_after": 10}
    async with gateway([backend]) as (app, client):
        app.state.inference.backends[model].pool.replicas[1].in_flight = 1  # the 503 replica first
        r = await client.post("/v1/chat/completions", json=body)
        app.state.inference.backends[model].pool.replicas[1].in_flight -= 1
        assert r.status_code == 200
    assert _get("aligngate_requests_total", model=model, arm="control", status="200") == 1.0
    assert _get("aligngate_upstream_errors_total", model=model, status="503") == 1.0
    assert _get("aligngate_in_flight", model=model) == 0.0
    assert _get("aligngate_ttft_seconds_count", model=model, arm="control") == 1.0
