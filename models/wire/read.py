"""The OpenAI wire format, read: a choice's text, the usage counts, whole answers and streams, error bodies.

The one reader of each, for the gateway (pipeline, trace store) and the engines (``models.remote``):

* :func:`content_text`: the text of a message ``content`` (a string, or a list's ``text`` parts joined with
  ``"\n"``; images and other parts are left out; anything else is ``""``).
* :func:`choice_text`: the text of one choice. Completions: its ``text``. Chat: its ``message.content`` (or a
  streamed choice's ``delta.content``) read by :func:`content_text`; ``None`` for an answer that calls tools
  (``tool_calls`` or ``function_call`` in the message; a streamed delta is read whatever it carries), for
  content that is neither a string nor a list, and for anything malformed. :func:`set_choice_text` replaces
  it (and drops the choice's ``logprobs``, which described the replaced tokens).
* :func:`chunk_choices`: the choices of one chunk of a streamed answer as :class:`ChunkChoice` objects (index,
  text, finish reason, whether the delta calls tools, the choice itself); :func:`stream_error`: the message of
  a mid-stream ``error`` chunk.
* :func:`usage_counts`: ``(prompt_tokens, completion_tokens)`` of a body or chunk's ``usage``, each ``None``
  unless it is an integer (junk, a missing or non-object ``usage``, a non-object body: ``(None, None)``).
* :func:`completions_from_body` reads a whole ``/v1/completions`` or ``/v1/chat/completions`` answer into
  ``Completion`` objects (a chat answer without text content, such as only tool calls, is ``""``);
  :class:`StreamDecoder` turns the bytes of a streamed answer into deltas incrementally (the SSE layer is
  ``models.wire.sse.EventDecoder``, lenient about invalid UTF-8; ``[DONE]`` ends the stream, and whatever
  follows it is ignored; a mid-stream ``error`` event raises ``EngineError``); :func:`error_message`
  extracts the server's message from an error body. Malformed input raises ``EngineError`` naming ``where``
  (the server, credentials already removed).

Usage accounting: with ``n`` > 1 servers report totals only, so each choice gets the shared ``prompt_tokens`` and
a share of ``completion_tokens`` proportional to its text length (the shares sum to the total). A streamed
choice's finishing ``Delta`` is held back until the stream ends so that it can carry the usage sent in a last
chunk of its own (``completion_tokens`` only when there is one choice); the stream's last ``Delta`` holds the
raw usage object in ``extra["usage"]``. Finish reasons other than ``"length"`` are reported as ``"stop"``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from models.engine import Completion, Delta, EngineError, FinishReason
from models.wire.sse import Event, EventDecoder

__all__ = [
    "MAX_MESSAGE",
    "ChunkChoice",
    "StreamDecoder",
    "choice_text",
    "chunk_choices",
    "completions_from_body",
    "content_text",
    "deltas_from_body",
    "error_message",
    "set_choice_text",
    "snippet",
    "stream_error",
    "usage_counts",
]

#: Longest server text quoted in an error message.
MAX_MESSAGE = 300

JSONObj = dict[str, Any]


def content_text(content: object) -> str:
    """The text of an OpenAI message ``content``: the string itself, or the ``text`` parts of a content list
    joined with newlines (images and other parts are left out); anything else gives ``""``."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = [
            part["text"]
            for part in content
            if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)
        ]
        return "\n".join(texts)
    return ""


def choice_text(choice: object, chat: bool, *, streamed: bool = False) -> str | None:
    """The text of one choice of an answer (``streamed``: of a stream's chunk); ``None`` when it has none: a
    chat answer that calls tools, content that is not text, a malformed choice."""
    if not isinstance(choice, dict):
        return None
    if not chat:
        text = choice.get("text")
        return text if isinstance(text, str) else None
    message = choice.get("delta" if streamed else "message")
    if not isinstance(message, dict):
        return None
    if not streamed and (message.get("tool_calls") or message.get("function_call")):
        return None
    content = message.get("content")
    return content_text(content) if isinstance(content, (str, list)) else None


def set_choice_text(choice: dict[str, Any], chat: bool, text: str) -> None:
    """Replace the text of a choice whose :func:`choice_text` is not ``None``; its ``logprobs`` become null."""
    if chat:
        choice["message"]["content"] = text
    else:
        choice["text"] = text
    choice["logprobs"] = None  # they described the replaced tokens


@dataclass(frozen=True, slots=True)
class ChunkChoice:
    """One choice of a streamed chunk: its ``index``, its ``text`` (``""`` when the delta has none), its
    ``finish_reason`` (``None`` until its last chunk), whether its delta calls ``tools`` (``tool_calls`` or
    ``function_call``), and the choice object itself (``raw``)."""

    index: int
    text: str
    finish_reason: Any
    tools: bool
    raw: dict[str, Any]


def chunk_choices(obj: object, chat: bool) -> list[ChunkChoice]:
    """The choices of one chunk of a streamed answer (none for a usage-only chunk or anything malformed); a
    choice without an integer ``index`` is choice 0."""
    choices = obj.get("choices") if isinstance(obj, dict) else None
    if not isinstance(choices, list):
        return []
    out: list[ChunkChoice] = []
    for choice in choices:
        if not isinstance(choice, dict):
            continue
        index = choice.get("index")
        delta = choice.get("delta")
        tools = chat and isinstance(delta, dict) and bool(delta.get("tool_calls") or delta.get("function_call"))
        out.append(ChunkChoice(
            index if isinstance(index, int) else 0, choice_text(choice, chat, streamed=True) or "",
            choice.get("finish_reason"), tools, choice,
        ))
    return out


def stream_error(obj: object) -> str | None:
    """The message of a mid-stream ``error`` chunk (``{"error": ...}``), else ``None``."""
    if not isinstance(obj, dict) or not obj.get("error"):
        return None
    return error_message(orjson.dumps(obj)) or "unknown error"


def usage_counts(obj: object) -> tuple[int | None, int | None]:
    """``(prompt_tokens, completion_tokens)`` of ``obj["usage"]``; each ``None`` unless an integer."""
    usage = obj.get("usage") if isinstance(obj, dict) else None
    if not isinstance(usage, dict):
        return None, None
    p, c = usage.get("prompt_tokens"), usage.get("completion_tokens")
    return (p if isinstance(p, int) else None), (c if isinstance(c, int) else None)


def _finish(value: object) -> FinishReason:
    return "length" if value == "length" else "stop"


def _engine_text(choice: JSONObj, chat: bool) -> str | None:
    """A whole answer's choice as an engine reports it: :func:`choice_text`, but ``""`` for a chat message
    without text content (only tool calls, or a null ``content``); ``None`` when malformed."""
    text = choice_text(choice, chat)
    if text is None and chat:
        message = choice.get("message")
        if isinstance(message, dict) and (
            message.get("content") is None or message.get("tool_calls") or message.get("function_call")
        ):
            return ""
    return text


def _both_counts(obj: object) -> tuple[int, int] | None:
    p, c = usage_counts(obj)
    return (p, c) if p is not None and c is not None else None


def _split_tokens(total: int, texts: Sequence[str]) -> list[int]:
    """``total`` split over choices in proportion to their text lengths (largest remainders; sums to total)."""
    if len(texts) == 1:
        return [total]
    weights = [max(len(t), 1) for t in texts]
    scale = sum(weights)
    exact = [total * w / scale for w in weights]
    shares = [int(x) for x in exact]
    order = sorted(range(len(texts)), key=lambda i: exact[i] - shares[i], reverse=True)
    for i in order[: total - sum(shares)]:
        shares[i] += 1
    return shares


def completions_from_body(obj: JSONObj, *, chat: bool, where: str) -> list[Completion]:
    """The choices of a whole (non-streamed) answer, ordered by index; ``chat`` selects ``message.content``."""
    choices = obj.get("choices")
    if not isinstance(choices, list) or not choices:
        raise EngineError(f"malformed answer from {where}: no 'choices'")
    parsed: list[tuple[int, str, FinishReason]] = []
    for position, choice in enumerate(choices):
        if not isinstance(choice, dict):
            raise EngineError(f"malformed answer from {where}: a choice is not an object")
        text = _engine_text(choice, chat)
        if text is None:
            field = "message.content" if chat else "text"
            raise EngineError(f"malformed answer from {where}: a choice has no '{field}' text")
        index = choice.get("index")
        parsed.append((index if isinstance(index, int) else position, text, _finish(choice.get("finish_reason"))))
    parsed.sort(key=lambda p: p[0])
    prompt_tokens, completion_tokens = _both_counts(obj) or (0, 0)
    shares = _split_tokens(completion_tokens, [p[1] for p in parsed])
    return [
        Completion(text=text, finish_reason=finish, prompt_tokens=prompt_tokens, completion_tokens=share, index=index)
        for (index, text, finish), share in zip(parsed, shares, strict=True)
    ]


def deltas_from_body(obj: JSONObj, *, chat: bool, where: str) -> list[Delta]:
    """A whole answer as finished deltas (for a server that ignores ``"stream": true``)."""
    completions = completions_from_body(obj, chat=chat, where=where)
    deltas = [Delta(c.text, c.index, c.finish_reason, c.prompt_tokens, c.completion_tokens) for c in completions]
    if isinstance(obj.get("usage"), dict):
        deltas[-1].extra["usage"] = obj["usage"]
    return deltas


class StreamDecoder:
    """Incremental SSE decoder for OpenAI streams: bytes in, ``Delta`` objects out.

    A choice's finishing ``Delta`` is held back until the stream ends, so that it can carry the usage that
    the server sends in a last chunk of its own.
    """

    def __init__(self, *, chat: bool, where: str) -> None:
        self.chat = chat
        self.where = where
        self.done = False
        self._events = EventDecoder(errors="replace")
        self._finished: dict[int, Delta] = {}
        self._seen: set[int] = set()
        self._usage: JSONObj | None = None

    def feed(self, chunk: bytes) -> list[Delta]:
        """Add the next bytes of the body; return the deltas they complete (``done`` turns true at ``[DONE]``)."""
        return self._read(self._events.feed(chunk))

    def finish(self) -> list[Delta]:
        """The held-back deltas, once the stream has ended (``[DONE]`` or the end of the body)."""
        out = [] if self.done else self._read(self._events.finish())
        unfinished = self._seen - self._finished.keys()
        if not self.done and (unfinished or not self._seen):
            raise EngineError(f"the stream from {self.where} ended before it finished")
        for index in unfinished:  # [DONE] came without a finish_reason for this choice
            self._finished[index] = Delta("", index, "stop")
        held = [self._finished[i] for i in sorted(self._finished)]
        if self._usage is not None and held:
            counts = _both_counts({"usage": self._usage})
            if counts is not None:
                for delta in held:
                    delta.prompt_tokens = counts[0]
                if len(held) == 1:
                    held[0].completion_tokens = counts[1]
            held[-1].extra["usage"] = self._usage
        return out + held

    def _read(self, events: list[Event]) -> list[Delta]:
        out: list[Delta] = []
        for event in events:
            if self.done:  # what follows [DONE] is ignored
                break
            if event.done:
                self.done = True
            else:
                self._event(event.data, out)
        return out

    def _event(self, payload: str, out: list[Delta]) -> None:
        try:
            obj = orjson.loads(payload)
        except orjson.JSONDecodeError:
            raise EngineError(f"malformed stream event from {self.where}: {payload[:MAX_MESSAGE]!r}") from None
        if not isinstance(obj, dict):
            raise EngineError(f"malformed stream event from {self.where}: not a JSON object")
        if obj.get("error"):
            detail = error_message(orjson.dumps(obj))
            raise EngineError(f"{self.where} failed mid-stream: {detail or 'unknown error'}")
        if isinstance(obj.get("usage"), dict):
            self._usage = obj["usage"]
        choices = obj.get("choices")
        if not isinstance(choices, list):
            if self._usage is None:
                raise EngineError(f"malformed stream event from {self.where}: no 'choices'")
            return
        for choice in choices:
            if not isinstance(choice, dict):
                raise EngineError(f"malformed stream event from {self.where}: a choice is not an object")
            index = choice.get("index", 0)
            if not isinstance(index, int):
                raise EngineError(f"malformed stream event from {self.where}: a choice has no index")
            text = choice_text(choice, self.chat, streamed=True) or ""
            self._seen.add(index)
            reason = choice.get("finish_reason")
            if reason is not None:
                self._finished[index] = Delta(text, index, _finish(reason))
            elif text:
                out.append(Delta(text, index))


def error_message(data: bytes) -> str:
    """The server's error message from an OpenAI-style error body, else the start of the body text."""
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        return snippet(data)
    if isinstance(obj, dict):
        err = obj.get("error", obj)
        if isinstance(err, dict):
            message = err.get("message") or err.get("detail")
            if isinstance(message, str):
                return message[:MAX_MESSAGE]
        elif isinstance(err, str):
            return err[:MAX_MESSAGE]
        detail = obj.get("detail")
        if isinstance(detail, str):
            return detail[:MAX_MESSAGE]
    return snippet(data)


def snippet(data: bytes) -> str:
    """The start of a body as text, for error messages."""
    text = data.decode("utf-8", "replace").strip()
    return text if len(text) <= MAX_MESSAGE else text[:MAX_MESSAGE] + "…"
