"""models/wire/read.py: the one reader of a choice's text, of usage, of whole answers and of streams."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from models.engine import Delta, EngineError
from models.wire.read import (
    ChunkChoice,
    StreamDecoder,
    choice_text,
    chunk_choices,
    completions_from_body,
    content_text,
    deltas_from_body,
    error_message,
    set_choice_text,
    stream_error,
    usage_counts,
)
from models.wire.sse import DONE, encode_event

# ---------------------------------------------------------------- content and choice text


def test_content_text() -> None:
    assert content_text("hi {x}") == "hi {x}"
    parts = [
        {"type": "text", "text": "look"},
        {"type": "image_url", "image_url": {"url": "data:"}},
        {"type": "text", "text": "here"},
    ]
    assert content_text(parts) == "look\nhere"
    assert content_text(None) == ""
    assert content_text([{"type": "image_url"}]) == ""


def _message(**fields: Any) -> dict[str, Any]:
    return {"index": 0, "message": {"role": "assistant", **fields}, "finish_reason": "stop"}


@pytest.mark.parametrize(
    ("choice", "text"),
    [
        (_message(content="hi"), "hi"),
        (_message(content=""), ""),
        (
            _message(content=[{"type": "text", "text": "a"}, {"type": "image_url"}, {"type": "text", "text": "b"}]),
            "a\nb",
        ),
        (_message(content=None), None),
        (_message(content=5), None),
        (_message(), None),
        (_message(content=None, tool_calls=[{"id": "c"}]), None),
        (_message(content="calling", tool_calls=[{"id": "c"}]), None),
        (_message(content=None, function_call={"name": "f"}), None),
        (_message(content="x", tool_calls=[]), "x"),
        ({"index": 0, "message": "hi"}, None),
        ({"index": 0}, None),
        ("not a choice", None),
        (None, None),
    ],
)
def test_chat_choice_text(choice: Any, text: str | None) -> None:
    assert choice_text(choice, True) == text


def test_completion_choice_text() -> None:
    assert choice_text({"index": 0, "text": "t"}, False) == "t"
    assert choice_text({"index": 0, "text": ""}, False) == ""
    assert choice_text({"index": 0, "text": None}, False) is None
    assert choice_text({"index": 0, "message": {"content": "x"}}, False) is None
    assert choice_text({"index": 0, "text": "t"}, False, streamed=True) == "t"


def test_streamed_choice_text_reads_the_delta() -> None:
    assert choice_text({"index": 0, "delta": {"content": "piece"}}, True, streamed=True) == "piece"
    assert choice_text({"index": 0, "delta": {"role": "assistant"}}, True, streamed=True) is None
    assert choice_text({"index": 0, "delta": {"content": "x", "tool_calls": [{}]}}, True, streamed=True) == "x"
    assert choice_text({"index": 0, "message": {"content": "x"}}, True, streamed=True) is None
    assert choice_text({"index": 0, "delta": None}, True, streamed=True) is None


def test_set_choice_text() -> None:
    chat = _message(content="old")
    chat["logprobs"] = {"content": []}
    set_choice_text(chat, True, "new")
    assert chat == {
        "index": 0,
        "message": {"role": "assistant", "content": "new"},
        "finish_reason": "stop",
        "logprobs": None,
    }
    completion = {"index": 0, "text": "old", "logprobs": {"tokens": ["old"]}}
    set_choice_text(completion, False, "new")
    assert completion == {"index": 0, "text": "new", "logprobs": None}


@pytest.mark.parametrize(
    ("obj", "counts"),
    [
        ({"usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}}, (3, 4)),
        ({"usage": {"prompt_tokens": 3}}, (3, None)),
        ({"usage": {"prompt_tokens": "3", "completion_tokens": 4.0}}, (None, None)),
        ({"usage": None}, (None, None)),
        ({"usage": [1, 2]}, (None, None)),
        ({}, (None, None)),
        ([1], (None, None)),
        (None, (None, None)),
    ],
)
def test_usage_counts(obj: Any, counts: tuple[int | None, int | None]) -> None:
    assert usage_counts(obj) == counts


# ---------------------------------------------------------------- whole answers


def test_completions_from_body_orders_choices_and_shares_the_usage() -> None:
    body = {
        "choices": [
            {"index": 1, "text": "longer text", "finish_reason": "length"},
            {"index": 0, "text": "a", "finish_reason": "stop"},
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 6},
    }
    got = completions_from_body(body, chat=False, where="srv")
    assert [(c.index, c.text, c.finish_reason, c.prompt_tokens) for c in got] == [
        (0, "a", "stop", 5),
        (1, "longer text", "length", 5),
    ]
    assert sum(c.completion_tokens for c in got) == 6
    assert got[1].completion_tokens > got[0].completion_tokens


def test_completions_from_body_chat_without_text_content_is_empty() -> None:
    for choice in (_message(content=None), _message(content=None, tool_calls=[{"id": "c"}])):
        [c] = completions_from_body({"choices": [choice]}, chat=True, where="srv")
        assert (c.text, c.prompt_tokens, c.completion_tokens) == ("", 0, 0)
    [c] = completions_from_body(
        {"choices": [_message(content=[{"type": "text", "text": "p"}])]}, chat=True, where="srv"
    )
    assert c.text == "p"


@pytest.mark.parametrize(
    ("body", "chat", "message"),
    [
        ({"object": "text_completion"}, False, "no 'choices'"),
        ({"choices": []}, False, "no 'choices'"),
        ({"choices": ["x"]}, False, "not an object"),
        ({"choices": [{"index": 0, "finish_reason": "stop"}]}, False, "no 'text' text"),
        ({"choices": [{"index": 0, "message": "x"}]}, True, "no 'message.content' text"),
        ({"choices": [_message(content=5)]}, True, "no 'message.content' text"),
    ],
)
def test_malformed_whole_answers(body: dict[str, Any], chat: bool, message: str) -> None:
    with pytest.raises(EngineError, match=message):
        completions_from_body(body, chat=chat, where="srv")


def test_deltas_from_body_keeps_the_raw_usage() -> None:
    usage = {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
    [delta] = deltas_from_body({"choices": [_message(content="whole")], "usage": usage}, chat=True, where="srv")
    assert (delta.text, delta.finish_reason, delta.completion_tokens, delta.extra) == (
        "whole",
        "stop",
        1,
        {"usage": usage},
    )


def test_error_message() -> None:
    assert error_message(b'{"error": {"message": "bad"}}') == "bad"
    assert error_message(b'{"error": "worse"}') == "worse"
    assert error_message(b'{"detail": "detailed"}') == "detailed"
    assert error_message(b"plain text ") == "plain text"
    assert error_message(b"x" * 400).endswith("…")


# ---------------------------------------------------------------- streams


def _chunk(index: int, text: str | None, finish: str | None = None, **extra: Any) -> bytes:
    delta = {} if text is None else {"content": text}
    return encode_event({"choices": [{"index": index, "delta": delta, "finish_reason": finish}], **extra})


def _decode(stream: bytes, *, chat: bool = True, split: int | None = None) -> tuple[list[Delta], StreamDecoder]:
    decoder = StreamDecoder(chat=chat, where="srv")
    parts = [stream] if split is None else [stream[i : i + split] for i in range(0, len(stream), split)]
    deltas = [d for part in parts for d in decoder.feed(part)]
    return deltas + decoder.finish(), decoder


STREAM = (
    b": keep-alive\r\n\r\n"
    + _chunk(0, "", None).replace(b'"content":""', b'"role":"assistant","content":""')
    + _chunk(0, "hé")
    + b'data: {"choices":[{"index":0,\ndata: "delta":{"content":" w\\u00f6rld"},"finish_reason":"length"}]}\n\n'
    + encode_event({"choices": [], "usage": {"prompt_tokens": 2, "completion_tokens": 3}})
    + DONE
)


@pytest.mark.parametrize("split", [None, 1, 2, 5, 64])
def test_stream_decoder_at_any_split(split: int | None) -> None:
    deltas, decoder = _decode(STREAM, split=split)
    assert decoder.done
    assert [(d.text, d.finish_reason) for d in deltas] == [("hé", None), (" wörld", "length")]
    assert (deltas[-1].prompt_tokens, deltas[-1].completion_tokens) == (2, 3)
    assert deltas[-1].extra == {"usage": {"prompt_tokens": 2, "completion_tokens": 3}}


def test_stream_decoder_ignores_what_follows_done() -> None:
    deltas, decoder = _decode(_chunk(0, "a", "stop") + DONE + b"data: {not json}\n\n")
    assert decoder.done
    assert [(d.text, d.finish_reason) for d in deltas] == [("a", "stop")]


def test_stream_decoder_without_done_or_final_blank_line() -> None:
    deltas, decoder = _decode(_chunk(0, "a") + _chunk(0, None, "stop").rstrip(b"\n"))
    assert not decoder.done
    assert [(d.text, d.finish_reason) for d in deltas] == [("a", None), ("", "stop")]


def test_stream_decoder_done_without_a_finish_reason_stops() -> None:
    deltas, _ = _decode(_chunk(0, "a") + DONE)
    assert [(d.text, d.finish_reason) for d in deltas] == [("a", None), ("", "stop")]


def test_stream_decoder_replaces_invalid_utf8() -> None:
    deltas, _ = _decode(b'data: {"choices":[{"index":0,"text":"caf\xe9","finish_reason":"stop"}]}\n\n', chat=False)
    assert deltas[0].text == "caf\ufffd"


@pytest.mark.parametrize(
    ("events", "message"),
    [
        (b"data: {not json}\n\ndata: [DONE]\n\n", "malformed stream event"),
        (b"data: [1]\n\n", "not a JSON object"),
        (b'data: {"object": "x"}\n\n', "no 'choices'"),
        (b'data: {"choices": ["x"]}\n\n', "a choice is not an object"),
        (b'data: {"choices": [{"index": "0"}]}\n\n', "a choice has no index"),
        (b'data: {"choices":[{"index":0,"text":"a","finish_reason":null}]}\n\n', "ended before it finished"),
        (b"", "ended before it finished"),
        (b'data: {"error": {"message": "out of memory"}}\n\n', "srv failed mid-stream: out of memory"),
        (b'event: error\ndata: {"error": "boom"}\n\n', "srv failed mid-stream: boom"),
    ],
)
def test_malformed_streams(events: bytes, message: str) -> None:
    with pytest.raises(EngineError, match=message):
        _decode(events, chat=False)


def test_stream_decoder_n_choices_share_prompt_tokens_only() -> None:
    usage = {"prompt_tokens": 4, "completion_tokens": 9}
    stream = _chunk(0, "a", "stop") + _chunk(1, "b", "length") + encode_event({"choices": [], "usage": usage})
    deltas, _ = _decode(stream + DONE)
    assert [(d.index, d.finish_reason, d.prompt_tokens, d.completion_tokens) for d in deltas] == [
        (0, "stop", 4, None),
        (1, "length", 4, None),
    ]
    assert orjson.loads(orjson.dumps(deltas[-1].extra["usage"])) == usage


def test_chunk_choices_reads_text_finish_and_tool_deltas() -> None:
    tool = {"index": 1, "delta": {"tool_calls": [{"index": 0}]}, "finish_reason": None}
    chunk = {"choices": [{"index": 0, "delta": {"content": "Hi"}, "finish_reason": None}, tool,
                         {"delta": {}, "finish_reason": "stop"}, "junk"]}
    assert chunk_choices(chunk, chat=True) == [
        ChunkChoice(0, "Hi", None, False, chunk["choices"][0]),
        ChunkChoice(1, "", None, True, tool),
        ChunkChoice(0, "", "stop", False, chunk["choices"][2]),
    ]
    assert chunk_choices({"choices": [{"index": 2, "text": "t", "finish_reason": "length"}]}, chat=False) == [
        ChunkChoice(2, "t", "length", False, {"index": 2, "text": "t", "finish_reason": "length"})
    ]
    assert chunk_choices({"choices": [], "usage": {}}, chat=True) == []
    assert chunk_choices([], chat=True) == []


def test_stream_error_reads_an_error_chunk() -> None:
    assert stream_error({"error": {"message": "out of memory", "code": 500}}) == "out of memory"
    assert stream_error({"error": "gone"}) == "gone"
    assert stream_error({"choices": []}) is None
    assert stream_error("x") is None
