"""Client authentication (plain and sha256 keys) and the upstream API key taken from ``api_key_env``."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.e2e.support import Fake, Gateway, Procs, assert_openai_error, backend, gateway_config

PLAIN = "sk-plain"
HASHED = "sk-hashed"
UPSTREAM_KEY = "upkey-e2e-7f3a9c"  # distinctive, so finding it anywhere is a real leak
KEY_ENV = "E2E_UPSTREAM_KEY"
_seen: list[str] = []  # every response status line, header and body this module received


class AuthSetup:
    def __init__(self, keyed: Fake, open_: Fake, gw: Gateway) -> None:
        self.keyed = keyed
        self.open = open_
        self.gw = gw


@pytest.fixture(scope="module")
def auth(module_procs: Procs) -> AuthSetup:
    keyed = module_procs.fake("keyed", 0, "--require-key", UPSTREAM_KEY)
    open_ = module_procs.fake("open")
    digest = hashlib.sha256(HASHED.encode()).hexdigest()
    config = gateway_config(
        backend("keyed", keyed.v1, api_key_env=KEY_ENV),
        backend("open", open_.v1),
        api_keys=[PLAIN, f"sha256:{digest}"],
    )
    gw = module_procs.gateway(config, env={KEY_ENV: UPSTREAM_KEY}, tag="auth")
    return AuthSetup(keyed, open_, gw)


def _record(resp: httpx.Response) -> httpx.Response:
    _seen.append(f"{resp.status_code} {resp.headers!r} {resp.text}")
    return resp


@pytest.fixture
def http(auth: AuthSetup) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=auth.gw.url, timeout=30) as c:
        yield c


CHAT = {"model": "open", "messages": [{"role": "user", "content": "hi"}]}


def test_missing_key_401(http: httpx.Client) -> None:
    for path, method in (("/v1/chat/completions", "POST"), ("/v1/completions", "POST"), ("/v1/models", "GET")):
        resp = _record(http.request(method, path, json=CHAT if method == "POST" else None))
        assert_openai_error(resp, 401, type_="authentication_error")


def test_wrong_key_401(auth: AuthSetup, http: httpx.Client) -> None:
    for header in ("Bearer sk-wrong", "Bearer " + hashlib.sha256(HASHED.encode()).hexdigest(), "Basic sk-plain",
                   "Bearer", "sk-plain"):
        resp = _record(http.post("/v1/chat/completions", json=CHAT, headers={"Authorization": header}))
        assert_openai_error(resp, 401, type_="authentication_error")
    with auth.gw.client(api_key="sk-wrong") as client, pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model="open", messages=[{"role": "user", "content": "x"}])
    assert not auth.open.posts()  # nothing unauthenticated reached an upstream


@pytest.mark.parametrize("key", [PLAIN, HASHED])
def test_configured_keys_work(auth: AuthSetup, key: str) -> None:
    with auth.gw.client(api_key=key) as client:
        raw = client.chat.completions.with_raw_response.create(
            model="open", messages=[{"role": "user", "content": "authed"}]
        )
        _seen.append(f"{raw.headers!r} {raw.text}")
        assert raw.parse().choices[0].message.content == "Hello from open! You said: authed"
        assert sorted(m.id for m in client.models.list().data) == ["keyed", "open"]
    # The client's own key is the gateway's business: it is never forwarded to an upstream.
    for req in auth.open.posts():
        assert key not in str(req["headers"])


def test_ops_routes_open_without_key(http: httpx.Client) -> None:
    assert _record(http.get("/healthz")).status_code == 200
    metrics = _record(http.get("/metrics"))
    assert metrics.status_code == 200 and "aligngate_requests_total" in metrics.text
    assert _record(http.get("/readyz")).status_code == 200


def test_upstream_key_from_env(auth: AuthSetup) -> None:
    auth.keyed.reset()
    with auth.gw.client(api_key=PLAIN) as client:
        raw = client.chat.completions.with_raw_response.create(
            model="keyed", messages=[{"role": "user", "content": "needs key"}]
        )
        _seen.append(f"{raw.headers!r} {raw.text}")
        assert raw.parse().choices[0].message.content == "Hello from keyed! You said: needs key"
        raw_stream = client.completions.with_raw_response.create(model="keyed", prompt="streamed", stream=True)
        _seen.append(repr(raw_stream.headers))
        text = ""
        for chunk in raw_stream.parse():
            _seen.append(chunk.model_dump_json())
            text += chunk.choices[0].text if chunk.choices else ""
        assert text == "Hello from keyed! You said: streamed"
    posts = auth.keyed.posts()
    assert len(posts) == 2
    assert all(p["headers"]["authorization"] == f"Bearer {UPSTREAM_KEY}" for p in posts)


def test_upstream_key_never_leaks(auth: AuthSetup, http: httpx.Client) -> None:
    # Error paths too: an upstream error relayed, a bad request, readiness (which probes with the key).
    _record(http.post("/v1/chat/completions", headers={"Authorization": f"Bearer {PLAIN}"},
                      json={"model": "keyed", "messages": [{"role": "user", "content": "e"}],
                            "fake": {"mode": "error", "status": 400}}))
    _record(http.post("/v1/chat/completions", headers={"Authorization": f"Bearer {PLAIN}"},
                      json={"model": "keyed", "messages": "bad"}))
    _record(http.get("/readyz"))
    _record(http.get("/metrics"))
    assert _seen
    for text in _seen:
        assert UPSTREAM_KEY not in text
    log = auth.gw.log()
    assert "aligngate.access" in log
    assert UPSTREAM_KEY not in log
    assert PLAIN not in log and HASHED not in log
