"""Token ids to text, one token at a time: incremental detokenization and stop-string handling.

``IncrementalDetokenizer`` never yields half a character: a token that ends inside a multi-byte UTF-8
sequence decodes to U+FFFD, so its text is held until a later token completes it. It re-decodes a short
window (the previous piece and the new tokens) rather than the token alone, so tokenizers whose decoders
depend on context (SentencePiece's leading-space rule) come out as a full decode would.

``StopText`` accumulates that text, cuts it at the first stop string, and holds back a tail that could
still become a stop string, so a streamed client never sees text a stop string later removes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

REPLACEMENT = "\ufffd"


class IncrementalDetokenizer:
    """Feed token ids with ``push``; each call returns the text that is now safe to show (maybe empty)."""

    __slots__ = ("_decode", "_prefix", "_read", "ids")

    def __init__(self, decode: Callable[[list[int]], str]) -> None:
        self._decode = decode
        self.ids: list[int] = []
        #: ``ids[_prefix:_read]`` is the last emitted piece, re-decoded as context for the next one.
        self._prefix = 0
        self._read = 0

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        prefix_text = self._decode(self.ids[self._prefix : self._read])
        new_text = self._decode(self.ids[self._prefix :])
        if len(new_text) > len(prefix_text) and not new_text.endswith(REPLACEMENT):
            self._prefix, self._read = self._read, len(self.ids)
            return new_text[len(prefix_text) :]
        return ""

    def flush(self) -> str:
        """The text still held (an unfinished character comes out as U+FFFD); call once, at the end."""
        prefix_text = self._decode(self.ids[self._prefix : self._read])
        new_text = self._decode(self.ids[self._prefix :])
        self._prefix = self._read = len(self.ids)
        return new_text[len(prefix_text) :] if len(new_text) > len(prefix_text) else ""


class StopText:
    """The completion text so far, cut at the first stop string; ``feed`` returns what may be shown now."""

    __slots__ = ("_emitted", "_longest", "_stops", "stopped", "text")

    def __init__(self, stops: Sequence[str] = ()) -> None:
        self._stops = tuple(dict.fromkeys(stop for stop in stops if stop))
        self._longest = max((len(stop) for stop in self._stops), default=0)
        self.text = ""
        self._emitted = 0
        self.stopped = False

    def feed(self, piece: str) -> str:
        if self.stopped or not piece:
            return ""
        self.text += piece
        if not self._stops:
            return self._emit(len(self.text))
        # A stop string cannot start before `_emitted`: any text that could begin one was held back.
        hits = [at for stop in self._stops if (at := self.text.find(stop, self._emitted)) >= 0]
        if hits:
            self.text = self.text[: min(hits)]
            self.stopped = True
            return self._emit(len(self.text))
        return self._emit(len(self.text) - self._held_tail())

    def finish(self) -> str:
        """Release the held tail: the completion ended without a stop string completing."""
        return self._emit(len(self.text))

    def _emit(self, end: int) -> str:
        if end <= self._emitted:
            return ""
        out = self.text[self._emitted : end]
        self._emitted = end
        return out

    def _held_tail(self) -> int:
        """Length of the longest unemitted suffix that is a proper prefix of some stop string."""
        room = min(len(self.text) - self._emitted, self._longest - 1)
        for size in range(room, 0, -1):
            tail = self.text[-size:]
            if any(stop.startswith(tail) for stop in self._stops):
                return size
        return 0
