"""Chat and completions through the gateway, plain and streamed, with the sync and async openai clients,
and the gateway's response headers (X-Request-Id, X-Aligngate-Overhead-Ms, X-Aligngate-Arm)."""

from __future__ import annotations

import re
import uuid
from typing import Any

import openai

from tests.e2e.support import Stack

HELLO_A = "Hello from replica-a! You said: {}"
HELLO_B = "Hello from replica-b! You said: {}"


def _check_gateway_headers(headers: Any, request_id: str | None = None) -> str:
    """The gateway's response headers; returns the request id."""
    get = headers.get
    rid = get("x-request-id")
    assert rid, "X-Request-Id missing"
    if request_id is not None:
        assert rid == request_id
    else:
        assert re.fullmatch(r"[0-9a-f]{32}", rid), rid
    overhead = float(get("x-aligngate-overhead-ms"))
    assert 0.0 <= overhead < 1000.0, overhead
    assert get("x-aligngate-arm") == "control"
    return str(rid)


def test_chat_sync_plain_headers(stack: Stack, client: openai.OpenAI) -> None:
    rid = f"e2e-{uuid.uuid4().hex}"
    raw = client.chat.completions.with_raw_response.create(
        model="alpha", messages=[{"role": "user", "content": "hi there"}], extra_headers={"X-Request-Id": rid}
    )
    assert raw.status_code == 200
    _check_gateway_headers(raw.headers, rid)
    completion = raw.parse()
    assert completion.choices[0].message.content == HELLO_A.format("hi there")
    assert completion.choices[0].finish_reason == "stop"
    assert completion.model == "alpha"
    assert completion.usage is not None and completion.usage.total_tokens > 0


def test_request_id_generated_and_unique(client: openai.OpenAI) -> None:
    ids = set()
    for _ in range(3):
        raw = client.chat.completions.with_raw_response.create(
            model="beta", messages=[{"role": "user", "content": "x"}]
        )
        ids.add(_check_gateway_headers(raw.headers))
        assert raw.parse().choices[0].message.content == HELLO_B.format("x")
    assert len(ids) == 3


def test_chat_sync_stream(client: openai.OpenAI) -> None:
    rid = f"e2e-{uuid.uuid4().hex}"
    raw = client.chat.completions.with_raw_response.create(
        model="alpha", messages=[{"role": "user", "content": "stream me"}], stream=True,
        extra_headers={"X-Request-Id": rid},
    )
    assert raw.headers["content-type"].startswith("text/event-stream")
    _check_gateway_headers(raw.headers, rid)
    chunks = list(raw.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == HELLO_A.format("stream me")
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert len({c.id for c in chunks}) == 1


def test_completions_sync_plain_and_stream(client: openai.OpenAI) -> None:
    raw = client.completions.with_raw_response.create(model="beta", prompt="complete this")
    _check_gateway_headers(raw.headers)
    completion = raw.parse()
    assert completion.choices[0].text == HELLO_B.format("complete this")
    assert completion.object == "text_completion"

    stream = client.completions.create(model="beta", prompt="and this", stream=True)
    pieces = [c.choices[0].text for c in stream if c.choices]
    assert len(pieces) > 3  # really streamed, token by token
    assert "".join(pieces) == HELLO_B.format("and this")


async def test_async_chat_and_completions(stack: Stack) -> None:
    async with stack.gw.aclient() as client:
        raw = await client.chat.completions.with_raw_response.create(
            model="alpha", messages=[{"role": "user", "content": "async hi"}]
        )
        _check_gateway_headers(raw.headers)
        assert raw.parse().choices[0].message.content == HELLO_A.format("async hi")

        stream = await client.chat.completions.create(
            model="beta", messages=[{"role": "user", "content": "async stream"}], stream=True
        )
        text = ""
        async for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
        assert text == HELLO_B.format("async stream")

        completion = await client.completions.create(model="alpha", prompt="async prompt")
        assert completion.choices[0].text == HELLO_A.format("async prompt")

        cstream = await client.completions.create(model="alpha", prompt="async cstream", stream=True)
        ctext = "".join([c.choices[0].text async for c in cstream if c.choices])
        assert ctext == HELLO_A.format("async cstream")


def test_models_lists_configured_backends(client: openai.OpenAI) -> None:
    models = client.models.list()
    assert sorted(m.id for m in models.data) == ["alpha", "beta"]
