"""Server-sent events: encode, decode, and re-align a byte stream on event boundaries.

The proxy relays upstream SSE bytes untouched but only ever in whole events, so that a client never sees
half an event (or half a UTF-8 character) even when the upstream's TCP chunks split them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson

DONE = b"data: [DONE]\n\n"
_BOUNDARIES = (b"\n\n", b"\r\n\r\n", b"\r\r")


def encode_event(data: Any) -> bytes:
    """One ``data:`` event for a JSON-serialisable payload."""
    return b"data: " + orjson.dumps(data) + b"\n\n"


class EventAligner:
    """Accumulates raw bytes and releases the longest prefix that ends on an event boundary."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, chunk: bytes) -> bytes:
        """Add ``chunk``; return every complete event buffered so far (possibly ``b""``)."""
        buf = self._buf + chunk if self._buf else chunk
        end = _last_boundary(buf)
        if end < 0:
            self._buf = buf
            return b""
        self._buf = buf[end:]
        return buf[:end]

    @property
    def pending(self) -> bytes:
        """Bytes of an event not yet terminated (what a cut stream leaves behind)."""
        return self._buf


def _last_boundary(buf: bytes) -> int:
    """End index of the last event boundary in ``buf``, or -1."""
    best = -1
    for sep in _BOUNDARIES:
        pos = buf.rfind(sep)
        if pos >= 0:
            best = max(best, pos + len(sep))
    return best


def iter_events(data: bytes) -> Iterator[tuple[str, str]]:
    """Decode complete SSE events into ``(event_type, data)``; comments and ids are skipped.

    Multi-line ``data:`` fields are joined with ``\\n`` as the SSE specification says.
    """
    text = data.decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")
    for block in text.split("\n\n"):
        if not block.strip():
            continue
        event = "message"
        lines: list[str] = []
        for line in block.split("\n"):
            if not line or line.startswith(":"):
                continue
            field, _, value = line.partition(":")
            if value.startswith(" "):
                value = value[1:]
            if field == "data":
                lines.append(value)
            elif field == "event":
                event = value
        if lines:
            yield event, "\n".join(lines)


def contains_done(events: bytes) -> bool:
    """Whether a run of complete events includes the ``[DONE]`` sentinel as a ``data:`` line of its own.

    Only a match at the start of a line counts: JSON payloads cannot hold a raw newline, so text such as
    ``"content": "data: [DONE]"`` inside an event never matches.
    """
    if b"[DONE]" not in events:
        return False
    for prefix in (b"data: [DONE]", b"data:[DONE]"):
        if events.startswith(prefix) or b"\n" + prefix in events or b"\r" + prefix in events:
            return True
    return False


def insert_before_done(events: bytes, extra: bytes) -> bytes:
    """``events`` with the complete event(s) ``extra`` placed just before the ``[DONE]`` sentinel."""
    for prefix in (b"data: [DONE]", b"data:[DONE]"):
        if events.startswith(prefix):
            return extra + events
        for nl in (b"\n", b"\r"):
            pos = events.find(nl + prefix)
            if pos >= 0:
                return events[: pos + 1] + extra + events[pos + 1 :]
    return events + extra
