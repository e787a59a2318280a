"""``server.rate_limits`` against a real ``aligngate serve``, through the ``openai`` SDK: the headers it reads and
the ``RateLimitError`` it raises."""

from __future__ import annotations

import openai
import pytest

from tests.e2e.support import Gateway, Procs, Stack, backend, gateway_config, metric_sum


@pytest.fixture(scope="module")
def gw(stack: Stack, module_procs: Procs) -> Gateway:
    limits = {"per_key": {"requests_per_minute": 2, "tokens_per_minute": 100_000}}
    config = gateway_config(backend("alpha", stack.a.v1), api_keys=["sk-one", "sk-two"], rate_limits=limits)
    return module_procs.gateway(config, tag="ratelimits")


def test_the_sdk_sees_the_headers_and_the_429(gw: Gateway) -> None:
    with gw.client(api_key="sk-one") as client:
        raw = client.chat.completions.with_raw_response.create(
            model="alpha", max_tokens=50, messages=[{"role": "user", "content": "hi"}])
        assert raw.http_response.status_code == 200
        assert raw.headers["x-ratelimit-limit-requests"] == "2"
        assert raw.headers["x-ratelimit-remaining-requests"] == "1"
        assert raw.headers["x-ratelimit-limit-tokens"] == "100000"
        assert int(raw.headers["x-ratelimit-remaining-tokens"]) < 100_000
        assert raw.headers["x-ratelimit-reset-requests"].endswith("s")
        client.chat.completions.create(model="alpha", messages=[{"role": "user", "content": "hi"}])
        with pytest.raises(openai.RateLimitError) as info:
            client.chat.completions.create(model="alpha", messages=[{"role": "user", "content": "hi"}])
    err = info.value
    assert err.status_code == 429 and err.code == "rate_limit_exceeded"
    assert int(err.response.headers["retry-after"]) >= 1
    assert err.response.headers["x-ratelimit-remaining-requests"] == "0"
    assert "outcome=rate_limit_exceeded" in gw.wait_access_line(err.response.headers["x-request-id"])
    with gw.client(api_key="sk-two") as other:  # another key, another bucket
        other.chat.completions.create(model="alpha", messages=[{"role": "user", "content": "hi"}])
    assert metric_sum(gw.metrics(), "aligngate_rate_limited_total", scope="key", reason="requests") == 1
