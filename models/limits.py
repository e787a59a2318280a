"""What a client asked of an answer (``max_tokens``, ``stop``), held on the corrected answer an aligner serves.

* :class:`ClientLimits` — the request's ``max_completion_tokens`` / ``max_tokens`` and ``stop`` sequences.
* :func:`cut_at_stop` — a text up to the first stop sequence in it.
* :class:`StopScanner` — the same on a stream of deltas: text that could be the start of a stop sequence is held
  back until the next delta shows it is not (at most the longest stop sequence's length minus one character).
* :class:`Budget` — one choice served piece by piece (a sentence-by-sentence correction): each piece is cut at a
  stop sequence and charged against ``max_tokens``; once a stop sequence was met or the budget is spent the choice
  ends (:attr:`Budget.ended`: ``"stop"`` / ``"length"``). A piece is charged the aligner's count of its tokens
  when it is a correction, else an estimate of :data:`CHARS_PER_TOKEN` characters a token (the backend's tokens
  of one sentence are not known); the piece that spends the budget is served whole (a sentence is not cut), and
  the budget ends a choice only once a correction was served (the backend's own text kept its own limit).
* :func:`estimate_tokens` — that estimate; :func:`share_tokens` — the tokens of part of a text whose count is
  known (a correction cut at a stop sequence after the engine counted it), in proportion to the characters.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["CHARS_PER_TOKEN", "Budget", "ClientLimits", "StopScanner", "cut_at_stop", "estimate_tokens",
           "share_tokens"]

#: OpenAI's rule of thumb for English text.
CHARS_PER_TOKEN = 4


@dataclass(frozen=True, slots=True)
class ClientLimits:
    """``max_tokens``: the most completion tokens the client allows (``None``: no limit); ``stop``: its stop
    sequences (empty ones dropped)."""

    max_tokens: int | None = None
    stop: tuple[str, ...] = ()

    @classmethod
    def of_request(cls, body: Mapping[str, Any], chat: bool) -> ClientLimits:
        """The limits of an OpenAI request body (chat: ``max_completion_tokens``, else ``max_tokens``)."""
        limit = body.get("max_completion_tokens") if chat else None
        if not isinstance(limit, int) or isinstance(limit, bool):
            limit = body.get("max_tokens")
        stop = body.get("stop")
        stops: Sequence[Any] = [stop] if isinstance(stop, str) else stop if isinstance(stop, list) else []
        return cls(
            limit if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0 else None,
            tuple(s for s in stops if isinstance(s, str) and s),
        )

    @property
    def active(self) -> bool:
        return self.max_tokens is not None or bool(self.stop)


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """``text`` up to the earliest stop sequence in it, and whether one was found."""
    found = [i for i in (text.find(s) for s in stop if s) if i >= 0]
    if not found:
        return text, False
    return text[: min(found)], True


def estimate_tokens(text: str) -> int:
    """About how many tokens ``text`` is (:data:`CHARS_PER_TOKEN` characters a token; 0 for no text)."""
    return math.ceil(len(text) / CHARS_PER_TOKEN) if text else 0


def share_tokens(tokens: int, part: str, whole: str) -> int:
    """The tokens of ``part`` of ``whole`` when ``whole`` counts ``tokens``, in proportion to the characters."""
    if not whole:
        return 0
    return min(tokens, math.ceil(tokens * len(part) / len(whole)))


class StopScanner:
    """Stop sequences over a stream: :meth:`feed` gives what may be sent now; :attr:`stopped` once one was met."""

    def __init__(self, stop: Sequence[str]) -> None:
        self.stop = tuple(s for s in stop if s)
        self.stopped = False
        self._held = ""
        self._keep = max((len(s) for s in self.stop), default=1) - 1

    def feed(self, text: str) -> str:
        """What of ``text`` (after what was held back) can go out; nothing once a stop sequence was met."""
        if self.stopped:
            return ""
        if not self.stop:
            return text
        text = self._held + text
        cut, self.stopped = cut_at_stop(text, self.stop)
        if self.stopped:
            self._held = ""
            return cut
        keep = min(self._keep, len(text))
        self._held = text[len(text) - keep :] if keep else ""
        return text[: len(text) - keep]

    def finish(self) -> str:
        """The text still held back at the end of the stream."""
        held, self._held = self._held, ""
        return "" if self.stopped else held


class Budget:
    """One choice served piece by piece under the client's limits (see the module docstring)."""

    def __init__(self, limits: ClientLimits | None = None) -> None:
        self.limits = limits or ClientLimits()
        #: Tokens served so far (the aligner's counts, or estimates).
        self.spent = 0
        #: Whether a correction was served (only then can the budget end the choice).
        self.corrected = False
        #: Why the choice ended early: a stop sequence, or the budget spent.
        self.ended: Literal["stop", "length"] | None = None

    def cap(self, configured: int) -> int:
        """The most tokens the next correction may take: ``configured``, or what is left of the budget."""
        if self.limits.max_tokens is None:
            return configured
        return max(1, min(configured, self.limits.max_tokens - self.spent))

    def take(self, text: str, tokens: int | None) -> str:
        """Serve ``text`` (``tokens``: the aligner's count of it, ``None`` to estimate): what of it goes out."""
        if self.ended is not None:
            return ""
        cut, stopped = cut_at_stop(text, self.limits.stop)
        if stopped:
            self.ended = "stop"
            tokens = share_tokens(tokens, cut, text) if tokens is not None else None
        self.spent += tokens if tokens is not None else estimate_tokens(cut)
        self.corrected = self.corrected or tokens is not None
        limit = self.limits.max_tokens
        if self.ended is None and limit is not None and self.spent >= limit and self.corrected:
            self.ended = "length"  # the backend's own text, within its own limit, never ends the answer early
        return cut
