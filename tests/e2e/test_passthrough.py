"""Pass-through fidelity: vLLM extras reach the upstream byte for byte; n, logprobs, tools, response_format,
stream_options.include_usage and unicode behave exactly as the backend does."""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
import openai

from tests.e2e.support import Fake, Stack, sse_data

UNICODE_SUFFIX = " héllo ✓ 🌍 日本語"
TOOLS: list[Any] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
]
TOOL_ARGUMENTS = '{"city": "Paris"}'

VLLM_EXTRAS: dict[str, Any] = {
    "top_k": 7,
    "repetition_penalty": 1.05,
    "structured_outputs": {"choice": ["yes", "no"]},
    "chat_template_kwargs": {"enable_thinking": False, "nested": {"a": [1, 2.5, None, "ü"]}},
}


def _recorded(fake: Fake, marker: str) -> dict[str, Any]:
    hits = [r for r in fake.posts() if marker in r["raw"]]
    assert len(hits) == 1, f"expected one upstream request carrying {marker!r}, got {len(hits)}"
    return hits[0]


def test_vllm_extras_reach_upstream_byte_identical(stack: Stack) -> None:
    marker = uuid.uuid4().hex
    # Odd spacing, key order and escapes: any re-serialisation by the gateway would change these bytes.
    body = (
        '{ "messages" : [{"role":"user","content":"extras \\u00e9 ' + marker + '"}],\n'
        '  "top_k": 7, "repetition_penalty": 1.050, "model": "alpha",\n'
        '  "structured_outputs": {"choice": ["yes","no"]},'
        '  "chat_template_kwargs": {"enable_thinking": false, "x": [1, 2.50, null]} }'
    ).encode()
    resp = httpx.post(
        f"{stack.gw.v1}/chat/completions", content=body, headers={"Content-Type": "application/json"}, timeout=30
    )
    assert resp.status_code == 200, resp.text
    recorded = _recorded(stack.a, marker)
    assert recorded["raw"] == body.decode()
    assert recorded["path"] == "/v1/chat/completions"


def test_vllm_extras_via_sdk_extra_body(stack: Stack, client: openai.OpenAI) -> None:
    marker = uuid.uuid4().hex
    completion = client.chat.completions.create(
        model="beta", messages=[{"role": "user", "content": marker}], extra_body=VLLM_EXTRAS
    )
    assert completion.choices[0].message.content == f"Hello from replica-b! You said: {marker}"
    recorded = _recorded(stack.b, marker)
    for key, value in VLLM_EXTRAS.items():
        assert recorded["body"][key] == value, key
    # The SDK's own serialisation is what the upstream gets.
    assert json.loads(recorded["raw"]) == recorded["body"]

    marker2 = uuid.uuid4().hex
    client.completions.create(model="beta", prompt=marker2, extra_body={"top_k": 3, "min_p": 0.1})
    recorded2 = _recorded(stack.b, marker2)
    assert recorded2["body"]["top_k"] == 3 and recorded2["body"]["min_p"] == 0.1


def test_n_choices(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(model="alpha", messages=[{"role": "user", "content": "two"}], n=2)
    assert [c.index for c in completion.choices] == [0, 1]
    assert all(c.message.content == "Hello from replica-a! You said: two" for c in completion.choices)

    stream = client.chat.completions.create(
        model="alpha", messages=[{"role": "user", "content": "two"}], n=2, stream=True
    )
    texts = {0: "", 1: ""}
    for chunk in stream:
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
    assert texts == {0: "Hello from replica-a! You said: two", 1: "Hello from replica-a! You said: two"}


def test_logprobs(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model="alpha", messages=[{"role": "user", "content": "lp"}], logprobs=True, top_logprobs=2
    )
    lp = completion.choices[0].logprobs
    assert lp is not None and lp.content
    assert "".join(t.token for t in lp.content) == completion.choices[0].message.content
    assert all(len(t.top_logprobs) == 2 and t.logprob < 0 for t in lp.content)

    stream = client.chat.completions.create(
        model="alpha", messages=[{"role": "user", "content": "lp"}], logprobs=True, top_logprobs=2, stream=True
    )
    entries = [e for c in stream if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content or []]
    assert "".join(e.token for e in entries) == "Hello from replica-a! You said: lp"
    assert all(len(e.top_logprobs) == 2 for e in entries)

    legacy = client.completions.create(model="beta", prompt="lp", logprobs=2)
    assert legacy.choices[0].logprobs is not None
    assert len(legacy.choices[0].logprobs.top_logprobs or []) == len(legacy.choices[0].logprobs.tokens or [])


def test_tools_plain_and_streamed(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model="alpha", messages=[{"role": "user", "content": "weather?"}], tools=TOOLS, tool_choice="required"
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls is not None
    call = choice.message.tool_calls[0]
    assert call.function.name == "get_weather"  # type: ignore[union-attr]
    assert call.function.arguments == TOOL_ARGUMENTS  # type: ignore[union-attr]

    stream = client.chat.completions.create(
        model="alpha", messages=[{"role": "user", "content": "weather?"}], tools=TOOLS, stream=True,
        extra_body={"fake": {"mode": "tools"}},
    )
    names: list[str] = []
    pieces: list[str] = []
    finish = None
    for chunk in stream:
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        for tc in delta.tool_calls or []:
            assert tc.index == 0
            if tc.function and tc.function.name:
                names.append(tc.function.name)
            if tc.function and tc.function.arguments:
                pieces.append(tc.function.arguments)
        finish = chunk.choices[0].finish_reason or finish
    assert names == ["get_weather"]
    assert len(pieces) > 1  # arrived in several deltas
    assert "".join(pieces) == TOOL_ARGUMENTS
    assert json.loads("".join(pieces)) == {"city": "Paris"}
    assert finish == "tool_calls"


def test_response_format_json_object(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model="beta", messages=[{"role": "user", "content": "json please"}],
        response_format={"type": "json_object"},
    )
    assert json.loads(completion.choices[0].message.content or "") == {"answer": "Hello from replica-b"}


def test_stream_include_usage(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="alpha", messages=[{"role": "user", "content": "usage please"}], stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None and last.usage.total_tokens == last.usage.prompt_tokens + last.usage.completion_tokens
    assert last.usage.completion_tokens > 0
    assert all(c.usage is None for c in chunks[:-1])
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello from replica-a! You said: usage please"


def test_unicode_streamed_with_token_delay(stack: Stack, client: openai.OpenAI) -> None:
    prompt = "ünï ✓"
    expected = f"Hello from replica-a! You said: {prompt}{UNICODE_SUFFIX}"
    stream = client.chat.completions.create(
        model="alpha", messages=[{"role": "user", "content": prompt}], stream=True,
        extra_body={"fake": {"unicode": True, "token_delay_s": 0.01}},
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == expected

    # Raw bytes too: every event the client gets is whole, valid UTF-8 JSON, and [DONE] comes last.
    body = {
        "model": "alpha", "messages": [{"role": "user", "content": prompt}], "stream": True,
        "fake": {"unicode": True, "token_delay_s": 0.01},
    }
    with httpx.stream("POST", f"{stack.gw.v1}/chat/completions", json=body, timeout=30) as resp:
        assert resp.status_code == 200
        raw = b"".join(resp.iter_raw())
    events = sse_data(raw)
    assert events[-1] == "[DONE]"
    text = "".join(json.loads(e)["choices"][0]["delta"].get("content") or "" for e in events[:-1])
    assert text == expected

    completion = client.completions.create(
        model="alpha", prompt=prompt, stream=True, extra_body={"fake": {"unicode": True, "token_delay_s": 0.01}}
    )
    assert "".join(c.choices[0].text for c in completion if c.choices) == expected
