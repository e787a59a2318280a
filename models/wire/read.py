"""The OpenAI wire format, read: response bodies and SSE streams into ``Completion`` and ``Delta`` objects.

Used by :mod:`models.remote`. :func:`completions_from_body` reads a whole ``/v1/completions`` or
``/v1/chat/completions`` answer; :class:`StreamDecoder` turns the bytes of a streamed answer into deltas
incrementally (``data:`` lines, multi-line events, CRLF, comments, ``[DONE]``, mid-stream ``error`` events);
:func:`error_message` extracts the server's message from an error body. Malformed input raises
``EngineError`` naming ``where`` (the server, credentials already removed).

Usage accounting: with ``n`` > 1 servers report totals only, so each choice gets the shared ``prompt_tokens`` and
a share of ``completion_tokens`` proportional to its text length (the shares sum to the total). A streamed
choice's finishing ``Delta`` is held back until the stream ends so that it can carry the usage sent in a last
chunk of its own (``completion_tokens`` only when there is one choice); the stream's last ``Delta`` holds the
raw usage object in ``extra["usage"]``. Finish reasons other than ``"length"`` are reported as ``"stop"``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from models.engine import ChatTurn, Completion, Delta, EngineError, FinishReason

__all__ = ["MAX_MESSAGE", "StreamDecoder", "chat_messages", "completions_from_body", "deltas_from_body",
           "error_message", "snippet"]

#: Longest server text quoted in an error message.
MAX_MESSAGE = 300

JSONObj = dict[str, Any]


def chat_messages(turns: Sequence[ChatTurn]) -> list[dict[str, str]]:
    """Chat turns as the ``messages`` of a request body."""
    return [{"role": t.role, "content": t.content} for t in turns]


def _finish(value: object) -> FinishReason:
    return "length" if value == "length" else "stop"


def _choice_text(choice: Mapping[str, Any], *, chat: bool, streamed: bool) -> str | None:
    """The text of one choice (``None`` when the field is absent or not text)."""
    if not chat:
        text = choice.get("text")
    else:
        holder = choice.get("delta" if streamed else "message")
        if not isinstance(holder, dict):
            return None
        text = holder.get("content")
        if text is None:  # e.g. an answer that is only tool calls, or a role-only delta
            return ""
    return text if isinstance(text, str) else None


def _usage(obj: Mapping[str, Any]) -> tuple[int, int] | None:
    usage = obj.get("usage")
    if not isinstance(usage, dict):
        return None
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    if isinstance(prompt, int) and isinstance(completion, int):
        return prompt, completion
    return None


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
        text = _choice_text(choice, chat=chat, streamed=False)
        if text is None:
            field = "message.content" if chat else "text"
            raise EngineError(f"malformed answer from {where}: a choice has no '{field}' text")
        index = choice.get("index")
        parsed.append((index if isinstance(index, int) else position, text, _finish(choice.get("finish_reason"))))
    parsed.sort(key=lambda p: p[0])
    prompt_tokens, completion_tokens = _usage(obj) or (0, 0)
    shares = _split_tokens(completion_tokens, [p[1] for p in parsed])
    return [
        Completion(text=text, finish_reason=finish, prompt_tokens=prompt_tokens, completion_tokens=share, index=index)
        for (index, text, finish), share in zip(parsed, shares, strict=True)
    ]


def deltas_from_body(obj: JSONObj, *, chat: bool, where: str) -> list[Delta]:
    """A whole answer as finished deltas (for a server that ignores ``"stream": true``)."""
    completions = completions_from_body(obj, chat=chat, where=where)
    deltas = [
        Delta(c.text, c.index, c.finish_reason, c.prompt_tokens, c.completion_tokens) for c in completions
    ]
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
        self._buf = b""
        self._data: list[str] = []
        self._finished: dict[int, Delta] = {}
        self._seen: set[int] = set()
        self._usage: JSONObj | None = None

    def feed(self, chunk: bytes) -> list[Delta]:
        """Add the next bytes of the body; return the deltas they complete (``done`` turns true at ``[DONE]``)."""
        out: list[Delta] = []
        self._buf += chunk
        *lines, self._buf = self._buf.split(b"\n")
        for raw in lines:
            self._line(raw.rstrip(b"\r"), out)
            if self.done:
                break
        return out

    def finish(self) -> list[Delta]:
        """The held-back deltas, once the stream has ended (``[DONE]`` or the end of the body)."""
        out: list[Delta] = []
        if not self.done:
            if self._buf:
                self._line(self._buf.rstrip(b"\r"), out)
            self._line(b"", out)  # dispatch an event the body ended without a blank line after
        unfinished = self._seen - self._finished.keys()
        if not self.done and (unfinished or not self._seen):
            raise EngineError(f"the stream from {self.where} ended before it finished")
        for index in unfinished:  # [DONE] came without a finish_reason for this choice
            self._finished[index] = Delta("", index, "stop")
        held = [self._finished[i] for i in sorted(self._finished)]
        if self._usage is not None and held:
            counts = _usage({"usage": self._usage})
            if counts is not None:
                for delta in held:
                    delta.prompt_tokens = counts[0]
                if len(held) == 1:
                    held[0].completion_tokens = counts[1]
            held[-1].extra["usage"] = self._usage
        return out + held

    def _line(self, line: bytes, out: list[Delta]) -> None:
        if not line:
            if self._data:
                payload = "\n".join(self._data)
                self._data = []
                self._event(payload, out)
            return
        if line.startswith(b":"):
            return
        field, _, value = line.partition(b":")
        if field == b"data":
            text = value.decode("utf-8", "replace")
            self._data.append(text[1:] if text.startswith(" ") else text)

    def _event(self, payload: str, out: list[Delta]) -> None:
        if payload.strip() == "[DONE]":
            self.done = True
            return
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
            text = _choice_text(choice, chat=self.chat, streamed=True) or ""
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
