"""Server-sent events: encode, decode, and re-cut a byte stream on event boundaries.

* Encoding: :func:`encode_event` writes one compact UTF-8 ``data:`` event; :data:`DONE` is OpenAI's
  ``data: [DONE]`` sentinel.
* Re-cutting: the proxy relays upstream SSE bytes untouched but only ever in whole events
  (:class:`EventAligner`), so that a client never sees half an event (or half a UTF-8 character) even when the
  upstream's TCP chunks split them; :func:`contains_done` and :func:`insert_before_done` find and extend the end
  of a relayed stream.
* Decoding: :class:`EventDecoder` is the one SSE parser (the gateway's store and tests through
  :func:`iter_events`, the remote engine through ``models.wire.read.StreamDecoder``). Bytes go in split
  anywhere, whole :class:`Event` objects come out, as the SSE specification says: lines end with ``\n``,
  ``\r\n`` or ``\r`` (a ``\r`` at the end of a chunk waits for the next one); a blank line dispatches an event;
  lines starting with ``:`` are comments; one space after the field's colon is dropped; multi-line ``data:``
  fields are joined with ``\n``; ``event:`` names the event's type (default ``"message"``); other fields
  (``id``, ``retry``) are ignored; an event without ``data`` is not dispatched; a line is decoded only once it
  is complete (never half a UTF-8 character), with ``errors="strict"`` (``UnicodeDecodeError``) unless told
  otherwise. At the end of a body, :meth:`EventDecoder.finish` dispatches an event left without its blank line.
  ``[DONE]`` and ``error`` payloads are events like any other: :attr:`Event.done` names the first, and reading
  the JSON (``error`` events included) is ``models.wire.read``'s.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any, NamedTuple

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


class Event(NamedTuple):
    """One decoded event: its type (``event:``, default ``"message"``) and its ``data`` lines joined."""

    type: str
    data: str

    @property
    def done(self) -> bool:
        """Whether this is OpenAI's ``[DONE]`` sentinel."""
        return self.data.strip() == "[DONE]"


_LINE_END = re.compile(rb"\r\n|\n|\r")


class EventDecoder:
    """Incremental SSE decoder: ``feed`` bytes split anywhere, get the events they complete."""

    __slots__ = ("_buf", "_data", "_type", "errors")

    def __init__(self, errors: str = "strict") -> None:
        #: How an invalid UTF-8 line is decoded (``bytes.decode``'s ``errors``: "strict" raises).
        self.errors = errors
        self._buf = b""
        self._data: list[str] = []
        self._type: str | None = None

    def feed(self, chunk: bytes) -> list[Event]:
        """Add the next bytes; return every event they complete (possibly none)."""
        buf = self._buf + chunk if self._buf else chunk
        # a final "\r" may be the first half of "\r\n": it waits for the next bytes
        end = len(buf) - 1 if buf.endswith(b"\r") else len(buf)
        out: list[Event] = []
        start = 0
        for match in _LINE_END.finditer(buf, 0, end):
            self._line(buf[start : match.start()], out)
            start = match.end()
        self._buf = buf[start:]
        return out

    def finish(self) -> list[Event]:
        """The end of the body: the last line and an event left without its blank line, if any."""
        out: list[Event] = []
        buf, self._buf = self._buf, b""
        start = 0
        for match in _LINE_END.finditer(buf):
            self._line(buf[start : match.start()], out)
            start = match.end()
        if start < len(buf):
            self._line(buf[start:], out)
        self._line(b"", out)
        return out

    def _line(self, raw: bytes, out: list[Event]) -> None:
        line = raw.decode("utf-8", self.errors)
        if not line:
            if self._data:
                out.append(Event("message" if self._type is None else self._type, "\n".join(self._data)))
            self._data = []
            self._type = None
            return
        if line.startswith(":"):
            return
        field, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if field == "data":
            self._data.append(value)
        elif field == "event":
            self._type = value


def iter_events(data: bytes) -> Iterator[Event]:
    """The events of a whole body (``EventDecoder``, strict UTF-8: ``UnicodeDecodeError`` on invalid bytes)."""
    decoder = EventDecoder()
    yield from decoder.feed(data)
    yield from decoder.finish()


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
