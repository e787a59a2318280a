"""Every error is ``{"error": {message, type, param, code}}`` with the status OpenAI would use; never a
traceback. Runs against its own gateway: small ``max_body_bytes``, a 1 s backend and a backend that is down."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.e2e.support import Gateway, Procs, Stack, assert_openai_error, backend, free_port, gateway_config, sse_data

MAX_BODY = 2000


@pytest.fixture(scope="module")
def err_gw(stack: Stack, module_procs: Procs) -> Gateway:
    down = [f"http://127.0.0.1:{free_port()}/v1", f"http://127.0.0.1:{free_port()}/v1"]
    config = gateway_config(
        backend("alpha", stack.a.v1),
        backend("slow", stack.a.v1, timeout_s=1),
        backend("down", *down, connect_timeout_s=2),
        max_body_bytes=MAX_BODY,
    )
    return module_procs.gateway(config, tag="errors")


@pytest.fixture
def http(err_gw: Gateway) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=err_gw.v1, timeout=30) as c:
        yield c


def _chat(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "alpha", "messages": [{"role": "user", "content": "hi"}]}
    body.update(overrides)
    return body


def test_malformed_json_400(http: httpx.Client) -> None:
    resp = http.post("/chat/completions", content=b'{"model": "alpha", "messages": [', headers={
        "Content-Type": "application/json"})
    assert_openai_error(resp, 400, type_="invalid_request_error")
    resp = http.post("/completions", content=b"not json at all")
    assert_openai_error(resp, 400)
    resp = http.post("/chat/completions", content=b"")
    assert_openai_error(resp, 400)
    resp = http.post("/chat/completions", content=b'["a", "list"]')
    assert_openai_error(resp, 400)


@pytest.mark.parametrize(
    ("overrides", "param"),
    [
        ({"messages": "hello"}, "messages"),
        ({"temperature": "hot"}, "temperature"),
        ({"stream": "yes"}, "stream"),
        ({"n": "2"}, "n"),
        ({"model": 42}, "model"),
    ],
    ids=["messages-string", "temperature-string", "stream-yes", "n-string", "model-int"],
)
def test_wrong_types_400(http: httpx.Client, overrides: dict[str, Any], param: str) -> None:
    resp = http.post("/chat/completions", json=_chat(**overrides))
    err = assert_openai_error(resp, 400, type_="invalid_request_error")
    assert err["param"] == param or (err["param"] or "").startswith(param + "."), err


def test_missing_fields_400(http: httpx.Client) -> None:
    body = _chat()
    del body["model"]
    err = assert_openai_error(http.post("/chat/completions", json=body), 400)
    assert err["param"] == "model"
    body = _chat()
    del body["messages"]
    err = assert_openai_error(http.post("/chat/completions", json=body), 400)
    assert err["param"] == "messages"
    err = assert_openai_error(http.post("/completions", json={"model": "alpha"}), 400)
    assert err["param"] == "prompt"


def test_unknown_model_404(err_gw: Gateway, http: httpx.Client) -> None:
    err = assert_openai_error(http.post("/chat/completions", json=_chat(model="no-such-model")), 404,
                              code="model_not_found")
    assert "no-such-model" in err["message"]
    with err_gw.client() as client, pytest.raises(openai.NotFoundError) as info:
        client.completions.create(model="no-such-model", prompt="x")
    assert info.value.status_code == 404


def test_unknown_route_404(err_gw: Gateway) -> None:
    assert_openai_error(httpx.get(f"{err_gw.v1}/nope", timeout=10), 404)


def test_body_too_large_413(stack: Stack, http: httpx.Client) -> None:
    before = len(stack.a.posts())
    big = _chat(messages=[{"role": "user", "content": "x" * (MAX_BODY + 10)}])
    assert_openai_error(http.post("/chat/completions", json=big), 413, code="request_too_large")

    def chunked() -> Iterator[bytes]:  # no Content-Length: the limit holds on the bytes actually read
        data = json.dumps(big).encode()
        for i in range(0, len(data), 500):
            yield data[i:i + 500]

    assert_openai_error(http.post("/chat/completions", content=chunked()), 413)
    # Just under the limit still works.
    ok = _chat(messages=[{"role": "user", "content": "y" * (MAX_BODY - 200)}])
    assert http.post("/chat/completions", json=ok).status_code == 200
    assert len(stack.a.posts()) == before + 1  # the oversized bodies never reached the upstream


@pytest.mark.parametrize("status", [400, 500])
def test_upstream_error_relayed(http: httpx.Client, status: int) -> None:
    resp = http.post("/chat/completions", json=_chat(fake={"mode": "error", "status": status}))
    err = assert_openai_error(resp, status)
    assert err["message"] == "fake upstream error"
    # Streamed requests refused before the first byte: the same plain JSON error.
    resp = http.post("/chat/completions", json=_chat(stream=True, fake={"mode": "error", "status": status}))
    assert_openai_error(resp, status)


def test_upstream_error_text_becomes_json(http: httpx.Client) -> None:
    resp = http.post("/chat/completions", json=_chat(fake={"mode": "error_text", "status": 500}))
    err = assert_openai_error(resp, 500)
    assert "upstream exploded" in err["message"]
    resp = http.post("/completions", json={"model": "alpha", "prompt": "p", "fake": {"mode": "error_text",
                                                                                      "status": 422}})
    assert_openai_error(resp, 422)


def test_upstream_error_via_sdk(err_gw: Gateway) -> None:
    with err_gw.client() as client:
        with pytest.raises(openai.BadRequestError) as bad:
            client.chat.completions.create(model="alpha", messages=[{"role": "user", "content": "x"}],
                                           extra_body={"fake": {"mode": "error", "status": 400}})
        assert bad.value.status_code == 400
        with pytest.raises(openai.InternalServerError) as internal:
            client.chat.completions.create(model="alpha", messages=[{"role": "user", "content": "x"}],
                                           extra_body={"fake": {"mode": "error", "status": 500}})
        assert internal.value.status_code == 500


def test_every_replica_down_502(err_gw: Gateway, http: httpx.Client) -> None:
    ports = [url.split(":")[2].split("/")[0] for url in err_gw.config["backends"][2]["urls"]]
    for stream in (False, True):
        resp = http.post("/chat/completions", json=_chat(model="down", stream=stream))
        err = assert_openai_error(resp, 502, code="upstream_unavailable", type_="upstream_error")
        assert err["message"] == "Backend 'down' is unreachable."  # no address, no client-library wording
        assert not any(port in resp.text for port in ports)
        rid = resp.headers["x-request-id"]
        assert "outcome=upstream_unavailable" in err_gw.wait_access_line(rid)
        # the details are in the log, on lines that carry the request id
        assert any(port in line for port in ports for line in err_gw.log_lines(f"rid={rid}"))
    with err_gw.client() as client, pytest.raises(openai.APIStatusError) as info:
        client.completions.create(model="down", prompt="x")
    assert info.value.status_code == 502


def test_upstream_cut_before_answer_502(http: httpx.Client) -> None:
    resp = http.post("/chat/completions", json=_chat(fake={"mode": "cut"}))
    assert_openai_error(resp, 502)


def test_slow_upstream_504(http: httpx.Client) -> None:
    t = time.monotonic()
    resp = http.post("/chat/completions", json=_chat(model="slow", fake={"delay_s": 3}))
    assert_openai_error(resp, 504, code="upstream_timeout")
    assert time.monotonic() - t < 2.5  # the gateway gave up at timeout_s, not when the upstream answered

    resp = http.post("/chat/completions", json=_chat(model="slow", stream=True, fake={"delay_s": 3}))
    assert_openai_error(resp, 504, code="upstream_timeout")


def test_stream_stalls_mid_way_error_frame(http: httpx.Client) -> None:
    body = _chat(model="slow", stream=True, fake={"mode": "hang", "delay_s": 3})
    with http.stream("POST", "/chat/completions", json=body) as resp:
        assert resp.status_code == 200
        raw = b"".join(resp.iter_raw())
    assert b"Traceback" not in raw
    events = sse_data(raw)
    assert events[-1] == "[DONE]"
    err = json.loads(events[-2])["error"]
    assert err["code"] == "upstream_timeout"
    assert set(err) >= {"message", "type", "param", "code"}
    assert json.loads(events[0])["choices"][0]["delta"]["role"] == "assistant"


def test_readyz_503_when_a_backend_is_down(err_gw: Gateway) -> None:
    resp = httpx.get(f"{err_gw.url}/readyz", timeout=15)
    assert resp.status_code == 503, resp.text
    body = resp.json()
    assert body["status"] == "not_ready"
    assert body["backends"]["down"] == {"ready": False, "replicas_up": 0, "replicas": 2}
    assert body["backends"]["alpha"]["ready"] is True


def test_no_traceback_in_log_for_bad_input(err_gw: Gateway) -> None:
    # Bad input is a client error, not a gateway crash: nothing above should have logged a traceback.
    assert "Traceback" not in err_gw.log()
