"""The OpenAI wire format, written: the chunks of a streamed chat or completions answer, shaped as vLLM sends them.

:class:`ChunkWriter` is the one writer of ``chat.completion.chunk`` / ``text_completion`` stream events (the
pipeline's streamed correction of a whole answer, the local engine's streams). Each method returns one
``data:`` event (``models.wire.sse.encode_event``: compact JSON, UTF-8 unescaped), or ``b""`` when there is
nothing to send:

* every chunk is ``{id, object, created, model[, system_fingerprint], choices: [one choice]}``, plus
  ``"usage": null`` when the client asked for ``stream_options.include_usage``;
* :meth:`~ChunkWriter.role` (chat only): ``delta: {"role": "assistant", "content": ""}``;
* :meth:`~ChunkWriter.text`: a piece of text (chat: ``delta.content``; completions: ``text``);
* :meth:`~ChunkWriter.tool_calls` (chat): a whole answer's tool calls in one delta, each with its ``index``
  (and the message's content, when it has some);
* :meth:`~ChunkWriter.choice`: a choice of another stream's chunk, as it is (tool-call deltas passed through);
* :meth:`~ChunkWriter.finish`: the choice's ``finish_reason`` (chat: an empty delta; completions: ``""``);
* :meth:`~ChunkWriter.last`: the chunk after the choices (``choices: []``) carrying :attr:`ChunkWriter.usage`
  when asked for, and any extra top-level fields given (the gateway's trace); ``b""`` when there is neither.

Every choice has ``"logprobs": null`` and ``"finish_reason"`` (null until the finishing chunk). The
``[DONE]`` sentinel is the caller's (``models.wire.sse.DONE``). :func:`usage_object` writes a ``usage`` object.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from models.wire.sse import encode_event

__all__ = ["ChunkWriter", "usage_object"]


def usage_object(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    """A ``usage`` object: the two counts and their total."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


class ChunkWriter:
    """The events of one streamed answer (``chat``: chat completion chunks, else text completions).

    Args:
        chat: chat (``chat.completion.chunk``) or completions (``text_completion``).
        include_usage: whether the client asked for ``stream_options.include_usage``.
        id, created, model: the fields every chunk repeats.
        system_fingerprint: repeated in every chunk too, unless None.
        usage: what :meth:`last` sends as ``usage`` (may be set later, once counted).
    """

    def __init__(
        self,
        chat: bool,
        include_usage: bool,
        *,
        id: Any,
        created: Any,
        model: Any,
        system_fingerprint: Any = None,
        usage: Any = None,
    ) -> None:
        self.chat = chat
        self.include_usage = include_usage
        self.usage = usage
        self.base: dict[str, Any] = {
            "id": id,
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": created,
            "model": model,
        }
        if system_fingerprint is not None:
            self.base["system_fingerprint"] = system_fingerprint

    @classmethod
    def for_answer(cls, answer: Mapping[str, Any], chat: bool, include_usage: bool) -> ChunkWriter:
        """The writer that streams a whole (non-streamed) ``answer`` again: its id, created, model,
        system_fingerprint and usage."""
        return cls(
            chat,
            include_usage,
            id=answer.get("id"),
            created=answer.get("created"),
            model=answer.get("model"),
            system_fingerprint=answer.get("system_fingerprint"),
            usage=answer.get("usage"),
        )

    @classmethod
    def for_chunk(cls, chunk: Mapping[str, Any], chat: bool, include_usage: bool) -> ChunkWriter:
        """The writer that streams another stream's answer again: the id, created, model and system_fingerprint of
        its (first) ``chunk``; :attr:`usage` is set once that stream has sent it."""
        return cls(
            chat,
            include_usage,
            id=chunk.get("id"),
            created=chunk.get("created"),
            model=chunk.get("model"),
            system_fingerprint=chunk.get("system_fingerprint"),
        )

    def _event(self, choice: dict[str, Any]) -> bytes:
        event = {**self.base, "choices": [choice]}
        if self.include_usage:
            event["usage"] = None
        return encode_event(event)

    def role(self, index: int) -> bytes:
        """Chat: the chunk that opens choice ``index`` (the assistant role); completions: ``b""``."""
        if not self.chat:
            return b""
        delta = {"role": "assistant", "content": ""}
        return self._event({"index": index, "delta": delta, "logprobs": None, "finish_reason": None})

    def text(self, index: int, text: str) -> bytes:
        """A piece of choice ``index``'s text."""
        if self.chat:
            return self._event({"index": index, "delta": {"content": text}, "logprobs": None, "finish_reason": None})
        return self._event({"index": index, "text": text, "logprobs": None, "finish_reason": None})

    def tool_calls(self, index: int, choice: Mapping[str, Any]) -> bytes:
        """The tool calls of a whole answer's chat ``choice``, as one delta."""
        message = choice.get("message") or {}
        calls = [{**call, "index": k} for k, call in enumerate(message.get("tool_calls") or [])]
        delta: dict[str, Any] = {"tool_calls": calls}
        if message.get("content"):
            delta["content"] = message["content"]
        return self._event({"index": index, "delta": delta, "logprobs": None, "finish_reason": None})

    def choice(self, choice: Mapping[str, Any]) -> bytes:
        """A choice of another stream's chunk, unchanged, in a chunk of this stream."""
        return self._event(dict(choice))

    def finish(self, index: int, reason: Any) -> bytes:
        """The chunk that ends choice ``index`` with ``reason``."""
        if self.chat:
            return self._event({"index": index, "delta": {}, "logprobs": None, "finish_reason": reason})
        return self._event({"index": index, "text": "", "logprobs": None, "finish_reason": reason})

    def last(self, extra: Mapping[str, Any] | None = None) -> bytes:
        """The usage chunk (``choices: []``) when asked for, with ``extra``'s fields; else an ``extra``-only chunk;
        ``b""`` when there is neither."""
        if not self.include_usage and extra is None:
            return b""
        event: dict[str, Any] = {**self.base, "choices": []}
        if self.include_usage:
            event["usage"] = self.usage
        if extra is not None:
            event.update(extra)
        return encode_event(event)
