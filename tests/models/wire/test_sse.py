"""models/wire/sse.py: the event aligner re-cuts any byte split on event boundaries; decode and encode helpers."""

from __future__ import annotations

import random

import orjson
import pytest

from models.wire.sse import DONE, Event, EventAligner, EventDecoder, contains_done, encode_event, iter_events

EVENTS_LF = [
    'data: {"choices":[{"delta":{"content":"日本語 🌍"}}]}\n\n'.encode(),
    b": keep-alive comment\n\n",
    "event: note\ndata: first line é\ndata: second ✓\n\n".encode(),
    'data: {"choices":[{"delta":{"content":"🌍🌍 héllo"}}]}\n\n'.encode(),
    DONE,
]
TAIL_LF = 'data: {"choices":[{"delta":{"content":"日本'.encode()

EVENTS_CRLF = [e.replace(b"\n", b"\r\n") for e in EVENTS_LF]
TAIL_CRLF = TAIL_LF


def _boundaries(events: list[bytes]) -> set[int]:
    ends, pos = {0}, 0
    for e in events:
        pos += len(e)
        ends.add(pos)
    return ends


def _run(chunks: list[bytes]) -> tuple[list[bytes], EventAligner]:
    aligner = EventAligner()
    return [aligner.feed(c) for c in chunks], aligner


def _check(chunks: list[bytes], events: list[bytes], tail: bytes, terminator: bytes) -> None:
    whole = b"".join(events)
    outs, aligner = _run(chunks)
    assert b"".join(outs) == whole
    assert aligner.pending == tail
    ends = _boundaries(events)
    pos = 0
    for out in outs:
        if not out:
            continue
        out.decode("utf-8")  # never half a character
        assert out.endswith(terminator)
        pos += len(out)
        assert pos in ends  # each piece ends exactly on an event boundary


@pytest.mark.parametrize(
    ("events", "tail", "terminator"),
    [(EVENTS_LF, TAIL_LF, b"\n\n"), (EVENTS_CRLF, TAIL_CRLF, b"\r\n\r\n")],
    ids=["lf", "crlf"],
)
def test_every_single_split_point(events: list[bytes], tail: bytes, terminator: bytes) -> None:
    stream = b"".join(events) + tail
    for i in range(len(stream) + 1):
        _check([stream[:i], stream[i:]], events, tail, terminator)


def test_every_pair_of_split_points() -> None:
    stream = b"".join(EVENTS_LF) + TAIL_LF
    n = len(stream)
    for i in range(0, n + 1, 3):
        for j in range(i, n + 1):
            _check([stream[:i], stream[i:j], stream[j:]], EVENTS_LF, TAIL_LF, b"\n\n")


@pytest.mark.parametrize("seed", range(20))
def test_random_chunk_sizes(seed: int) -> None:
    rng = random.Random(seed)
    events = EVENTS_LF * 3
    stream = b"".join(events) + TAIL_LF
    for _ in range(25):
        chunks, pos = [], 0
        while pos < len(stream):
            size = rng.randint(0, 23)  # zero-length chunks included
            chunks.append(stream[pos : pos + size])
            pos += size
        _check(chunks, events, TAIL_LF, b"\n\n")


def test_byte_by_byte_releases_each_event_once_complete() -> None:
    stream = b"".join(EVENTS_LF)
    outs, aligner = _run([stream[i : i + 1] for i in range(len(stream))])
    assert [o for o in outs if o] == EVENTS_LF
    assert aligner.pending == b""


def test_feed_returns_nothing_until_a_boundary() -> None:
    aligner = EventAligner()
    assert aligner.feed(b"data: {") == b""
    assert aligner.pending == b"data: {"
    assert aligner.feed(b'"a": 1}\n') == b""
    assert aligner.feed(b"\ndata: x") == b'data: {"a": 1}\n\n'
    assert aligner.pending == b"data: x"
    assert aligner.feed(b"\n\n") == b"data: x\n\n"
    assert aligner.pending == b""


def test_several_events_in_one_chunk_released_together() -> None:
    aligner = EventAligner()
    assert aligner.feed(b"data: 1\n\ndata: 2\n\ndata: 3") == b"data: 1\n\ndata: 2\n\n"
    assert aligner.pending == b"data: 3"


def test_crlf_boundary_split_inside_the_terminator() -> None:
    aligner = EventAligner()
    assert aligner.feed(b"data: a\r\n\r") == b""
    assert aligner.feed(b"\ndata: b\r\n") == b"data: a\r\n\r\n"
    assert aligner.feed(b"\r\n") == b"data: b\r\n\r\n"
    assert aligner.pending == b""


def test_cr_only_boundary() -> None:
    aligner = EventAligner()
    assert aligner.feed(b"data: a\r\rdata: b\r") == b"data: a\r\r"
    assert aligner.feed(b"\r") == b"data: b\r\r"


def test_mixed_terminators_use_the_last_boundary() -> None:
    aligner = EventAligner()
    assert aligner.feed(b"data: a\n\ndata: b\r\n\r\ndata: c") == b"data: a\n\ndata: b\r\n\r\n"
    assert aligner.pending == b"data: c"


# ---------------------------------------------------------------- iter_events


def test_iter_events_multiline_data_comments_and_event_field() -> None:
    data = b"".join(EVENTS_LF)
    assert list(iter_events(data)) == [
        ("message", '{"choices":[{"delta":{"content":"日本語 🌍"}}]}'),
        ("note", "first line é\nsecond ✓"),
        ("message", '{"choices":[{"delta":{"content":"🌍🌍 héllo"}}]}'),
        ("message", "[DONE]"),
    ]


def test_iter_events_crlf_and_cr_line_endings() -> None:
    assert list(iter_events(b"".join(EVENTS_CRLF))) == list(iter_events(b"".join(EVENTS_LF)))
    assert list(iter_events(b"data: a\r\rdata: b\r\r")) == [("message", "a"), ("message", "b")]


def test_iter_events_field_details() -> None:
    raw = (
        b"data:no-space\n\n"  # the space after the colon is optional
        b"data:  two spaces\n\n"  # only one leading space is stripped
        b"id: 7\nretry: 100\n\n"  # no data: no event
        b": only a comment\n\n"
        b"event: ping\nid: 9\ndata: {}\n\n"
        b"data\n\n"  # a field name alone: empty data
    )
    assert list(iter_events(raw)) == [
        ("message", "no-space"),
        ("message", " two spaces"),
        ("ping", "{}"),
        ("message", ""),
    ]


def test_iter_events_empty_input() -> None:
    assert list(iter_events(b"")) == []
    assert list(iter_events(b"\n\n\n")) == []


def _decode_in_pieces(chunks: list[bytes], errors: str = "strict") -> list[Event]:
    decoder = EventDecoder(errors)
    events = [e for c in chunks for e in decoder.feed(c)]
    return events + decoder.finish()


@pytest.mark.parametrize(
    "events", [EVENTS_LF, EVENTS_CRLF, [e.replace(b"\n", b"\r") for e in EVENTS_LF]], ids=["lf", "crlf", "cr"]
)
def test_decoder_gives_the_same_events_at_every_split_point(events: list[bytes]) -> None:
    stream = b"".join(events)
    whole = list(iter_events(stream))
    assert [e.type for e in whole] == ["message", "note", "message", "message"]
    for i in range(len(stream) + 1):
        for j in range(i, len(stream) + 1, 7):
            assert _decode_in_pieces([stream[:i], stream[i:j], stream[j:]]) == whole


def test_decoder_byte_by_byte_never_decodes_half_a_character() -> None:
    stream = b"".join(EVENTS_CRLF)
    decoder = EventDecoder()  # strict: half a character would raise
    got = [e for i in range(len(stream)) for e in decoder.feed(stream[i : i + 1])]
    assert got == list(iter_events(stream))
    assert decoder.finish() == []


def test_decoder_releases_an_event_at_its_blank_line() -> None:
    decoder = EventDecoder()
    assert decoder.feed(b"data: a\n") == []
    assert decoder.feed(b"data: b\r") == []
    assert decoder.feed(b"\n") == []  # "\r" then "\n" is one line end, not two
    assert decoder.feed(b"\r\n: comment\n") == [Event("message", "a\nb")]
    assert decoder.feed(b"event: x\ndata: [DONE]\n\n") == [Event("x", "[DONE]")]
    assert decoder.finish() == []


def test_decoder_finish_dispatches_an_unterminated_event() -> None:
    for tail in (b"data: last", b"data: last\n", b"data: last\r", b"data: last\r\n"):
        decoder = EventDecoder()
        assert decoder.feed(b"data: first\n\n" + tail) == [Event("message", "first")]
        assert decoder.finish() == [Event("message", "last")]


def test_event_done() -> None:
    assert Event("message", "[DONE]").done
    assert Event("message", " [DONE] ").done
    assert not Event("message", '{"a": "[DONE]"}').done


def test_invalid_utf8_is_strict_by_default_and_replaced_when_asked() -> None:
    raw = b"data: caf\xe9\n\n"
    with pytest.raises(UnicodeDecodeError):
        list(iter_events(raw))
    with pytest.raises(UnicodeDecodeError):
        list(iter_events(b": caf\xe9\n\ndata: x\n\n"))  # a comment's bytes are checked too
    assert _decode_in_pieces([raw], errors="replace") == [Event("message", "caf\ufffd")]


# ---------------------------------------------------------------- encode / done


def test_encode_event_is_one_compact_utf8_data_event() -> None:
    out = encode_event({"content": "日本語 🌍", "n": 1, "x": None})
    assert out == 'data: {"content":"日本語 🌍","n":1,"x":null}\n\n'.encode()
    assert list(iter_events(out)) == [("message", '{"content":"日本語 🌍","n":1,"x":null}')]
    assert orjson.loads(next(iter_events(out))[1]) == {"content": "日本語 🌍", "n": 1, "x": None}


def test_done_constant() -> None:
    assert DONE == b"data: [DONE]\n\n"


@pytest.mark.parametrize(
    ("events", "expected"),
    [
        (b"data: [DONE]\n\n", True),
        (b"data:[DONE]\n\n", True),
        (b'data: {"a":1}\n\ndata: [DONE]\n\n', True),
        (b'data: {"a":1}\n\n', False),
        (b"", False),
        (b"data: [DONE", False),
        (b"data: DONE\n\n", False),
    ],
)
def test_contains_done(events: bytes, expected: bool) -> None:
    assert contains_done(events) is expected


def test_contains_done_ignores_the_sentinel_text_inside_a_payload() -> None:
    event = encode_event({"choices": [{"delta": {"content": "SSE ends with data: [DONE] and a blank line"}}]})
    assert contains_done(event) is False
