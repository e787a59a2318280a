"""models/wire/chunks.py: the one writer of streamed chat and completions chunks, byte for byte."""

from __future__ import annotations

from typing import Any

import orjson

from models.wire.chunks import ChunkWriter, usage_object
from models.wire.sse import iter_events

ANSWER: dict[str, Any] = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 7,
    "model": "m",
    "system_fingerprint": "fp",
    "choices": [],
    "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
}


def _one(event: bytes) -> Any:
    [(kind, data)] = list(iter_events(event))
    assert kind == "message"
    return orjson.loads(data)


def test_chat_chunks_are_exact_bytes() -> None:
    chunks = ChunkWriter(True, False, id="c", created=1, model="m")
    head = b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":'
    assert chunks.role(0) == head + b'[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,' + (
        b'"finish_reason":null}]}\n\n'
    )
    assert chunks.text(1, "héllo 🌍") == head + (
        '[{"index":1,"delta":{"content":"héllo 🌍"},"logprobs":null,"finish_reason":null}]}\n\n'.encode()
    )
    assert (
        chunks.finish(1, "length") == head + b'[{"index":1,"delta":{},"logprobs":null,"finish_reason":"length"}]}\n\n'
    )
    assert chunks.last() == b""


def test_completion_chunks_are_exact_bytes() -> None:
    chunks = ChunkWriter(False, False, id="c", created=1, model="m")
    head = b'data: {"id":"c","object":"text_completion","created":1,"model":"m","choices":'
    assert chunks.role(0) == b""
    assert chunks.text(0, "a") == head + b'[{"index":0,"text":"a","logprobs":null,"finish_reason":null}]}\n\n'
    assert chunks.finish(0, "stop") == head + b'[{"index":0,"text":"","logprobs":null,"finish_reason":"stop"}]}\n\n'


def test_include_usage_adds_null_usage_then_the_usage_chunk() -> None:
    chunks = ChunkWriter(False, True, id="c", created=1, model="m")
    assert _one(chunks.text(0, "a"))["usage"] is None
    chunks.usage = usage_object(3, 4)
    assert chunks.last() == (
        b'data: {"id":"c","object":"text_completion","created":1,"model":"m","choices":[],'
        b'"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}\n\n'
    )


def test_for_answer_repeats_the_answer_fields() -> None:
    chunks = ChunkWriter.for_answer(ANSWER, True, True)
    event = _one(chunks.text(0, "x"))
    assert list(event) == ["id", "object", "created", "model", "system_fingerprint", "choices", "usage"]
    assert (event["id"], event["created"], event["model"], event["system_fingerprint"]) == ("chatcmpl-1", 7, "m", "fp")
    last = _one(chunks.last({"aligngate": {"arm": "align"}}))
    assert list(last) == ["id", "object", "created", "model", "system_fingerprint", "choices", "usage", "aligngate"]
    assert last["usage"] == ANSWER["usage"]
    assert last["aligngate"] == {"arm": "align"}
    assert "system_fingerprint" not in _one(ChunkWriter.for_answer({"id": "x"}, True, False).text(0, "y"))


def test_last_without_usage_carries_only_the_extra_fields() -> None:
    chunks = ChunkWriter.for_answer(ANSWER, False, False)
    assert chunks.last() == b""
    last = _one(chunks.last({"aligngate": {}}))
    assert last["choices"] == [] and "usage" not in last and last["aligngate"] == {}


def test_tool_calls_delta() -> None:
    chunks = ChunkWriter.for_answer(ANSWER, True, False)
    calls = [{"id": "a", "type": "function"}, {"id": "b", "type": "function"}]
    choice = {"index": 0, "message": {"role": "assistant", "content": None, "tool_calls": calls}}
    [out] = _one(chunks.tool_calls(2, choice))["choices"]
    assert out == {
        "index": 2,
        "delta": {"tool_calls": [{**calls[0], "index": 0}, {**calls[1], "index": 1}]},
        "logprobs": None,
        "finish_reason": None,
    }
    choice["message"]["content"] = "calling"
    assert _one(chunks.tool_calls(0, choice))["choices"][0]["delta"]["content"] == "calling"


def test_usage_object() -> None:
    assert usage_object(2, 5) == {"prompt_tokens": 2, "completion_tokens": 5, "total_tokens": 7}


def test_for_chunk_repeats_a_streamed_chunks_fields_and_passes_a_choice_through() -> None:
    chunk = {"id": "chatcmpl-9", "object": "chat.completion.chunk", "created": 8, "model": "m", "choices": [],
             "usage": {"prompt_tokens": 1}}
    chunks = ChunkWriter.for_chunk(chunk, True, True)
    assert chunks.usage is None  # set once the stream sends it
    choice = {"index": 1, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]},
              "logprobs": None, "finish_reason": None}
    event = _one(chunks.choice(choice))
    assert event == {"id": "chatcmpl-9", "object": "chat.completion.chunk", "created": 8, "model": "m",
                     "choices": [choice], "usage": None}
