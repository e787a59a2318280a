"""Prompt-lookup drafts: propose the tokens that followed the latest earlier occurrence of the last n-gram.

For the aligner (a correction mostly copies the answer in its prompt) the continuation of the last few
tokens is usually already in the context. ``NgramIndex`` keeps, for every n-gram of size 1..max_ngram,
where its most recent continuation starts, updated in O(max_ngram) per token, so a proposal is a dict
lookup rather than a scan of the whole context.
"""

from __future__ import annotations

from collections.abc import Iterable


class NgramIndex:
    """The context (prompt + generated tokens) of one row, indexed by n-grams."""

    __slots__ = ("_index", "max_ngram", "tokens")

    def __init__(self, tokens: Iterable[int], max_ngram: int = 3) -> None:
        if max_ngram < 1:
            raise ValueError("max_ngram must be >= 1")
        self.max_ngram = max_ngram
        self.tokens: list[int] = []
        #: ``_index[n - 1][gram]`` = the index just after gram's latest occurrence that has a continuation.
        self._index: list[dict[tuple[int, ...], int]] = [{} for _ in range(max_ngram)]
        for token in tokens:
            self.append(token)

    def append(self, token: int) -> None:
        at = len(self.tokens)
        for n in range(1, min(self.max_ngram, at) + 1):
            self._index[n - 1][tuple(self.tokens[at - n : at])] = at
        self.tokens.append(token)

    def propose(self, limit: int) -> list[int]:
        """Up to ``limit`` draft tokens continuing the context, longest matching n-gram first; [] if none."""
        if limit <= 0:
            return []
        size = len(self.tokens)
        for n in range(min(self.max_ngram, size), 0, -1):
            start = self._index[n - 1].get(tuple(self.tokens[size - n :]))
            if start is not None:
                return self.tokens[start : start + limit]
        return []
