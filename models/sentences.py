"""An answer cut into sentences while it streams in, for sentence-by-sentence correction.

:class:`SentenceSplitter` takes text in pieces of any size (:meth:`~SentenceSplitter.feed`) and hands back each
:class:`Segment` as soon as it is known to be complete; :meth:`~SentenceSplitter.finish` hands back the rest at
the end of the answer. The segments concatenate back to exactly the text fed: nothing is dropped, added or
reordered. :func:`split_sentences` cuts a whole text the same way. Pure: no I/O, no clock.

A segment is one of three kinds:

* ``sentence``: prose to correct, with the whitespace that follows it (so the next segment starts at its first
  character);
* ``code``: a fenced code block, from its opening fence (three or more backticks or tildes at the start of a
  line) through its closing fence line. It is never cut, whatever its length, and is not corrected;
* ``other``: a piece without any letter or digit (a markdown rule, a table separator, a lone bullet): nothing
  to correct either.

Where a sentence ends:

1. after ``.``, ``!``, ``?`` or ``…`` (or a run of them, such as ``?!`` or ``...``), with any closing quotes,
   brackets or emphasis marks after them, when whitespace follows and then a character that is not a lower-case
   letter. Punctuation followed directly by another character never ends one, so decimals and versions (``3.14``,
   ``v1.2``), URLs and e-mail addresses stay whole; and a single ``.`` after a known abbreviation (``Dr.``,
   ``e.g.``, ``approx.``; see :data:`ABBREVIATIONS`), an initial (``J.``), a dotted abbreviation (``U.S.``) or a
   list number opening its line (``1.``, ``iv.``) does not end one;
2. after the ideographic full stop ``。`` or the full-width exclamation and question marks (CJK text has no
   spaces), with any closing marks after them;
3. at a line break (list items, headings and paragraphs are segments of their own);
4. when none of those came within ``max_chars`` characters (text without punctuation): at the last whitespace
   before the bound, else at the bound itself.

Rules 1 and 2 do not apply inside an inline code span (between backticks on one line). A boundary that depends
on text not yet seen (``Dr.`` at the end of what was fed so far) waits for it, so a sentence is handed back when
the first character after it (and after its whitespace) arrives, or at :meth:`~SentenceSplitter.finish`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

__all__ = ["ABBREVIATIONS", "DEFAULT_MAX_CHARS", "Segment", "SegmentKind", "SentenceSplitter", "split_sentences"]

SegmentKind = Literal["sentence", "code", "other"]

#: The longest prose segment cut without a sentence boundary (rule 4).
DEFAULT_MAX_CHARS = 400

#: Words (lower case, without their final ``.``) after which a single ``.`` does not end a sentence.
ABBREVIATIONS = frozenset({
    "mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "mt", "rev", "gen", "col", "lt", "sgt", "capt", "hon",
    "vs", "cf", "approx", "ca", "fig", "figs", "eq", "eqs", "vol", "vols", "ch", "sec", "dept", "est", "ref",
    "incl", "resp", "e.g", "i.e", "a.k.a", "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep", "sept", "oct",
    "nov", "dec",
})

_LATIN_END = frozenset(".!?…")
_CJK_END = frozenset("。\uff01\uff1f｡")  # full stop, full-width exclamation and question marks, half-width stop
#: Closing quotes, brackets and emphasis marks that belong to the sentence they follow.
_CLOSERS = frozenset("\"')]}»”\u2019*_」』\uff09】》〉")
#: Opening marks before a word (stripped when checking for an abbreviation).
_OPENERS = "\"'([{«“\u2018*_"
_FENCES = ("```", "~~~")
_DOTTED = re.compile(r"(?:[A-Za-z]\.)+[A-Za-z]")
_ROMAN = re.compile(r"[ivxlcdm]+", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Segment:
    """A piece of an answer: its ``text`` (whitespace around it included) and its ``kind``."""

    text: str
    kind: SegmentKind

    @property
    def body(self) -> str:
        """The text without its leading and trailing whitespace."""
        return self.text.strip()

    def around(self) -> tuple[str, str]:
        """The leading and trailing whitespace, which a replacement of :attr:`body` keeps."""
        text = self.text
        body = text.strip()
        if not body:
            return text, ""
        start = text.index(body[0])
        return text[:start], text[start + len(body) :]

    def replaced(self, body: str) -> str:
        """This segment's text with its body replaced by ``body`` (the whitespace around it kept)."""
        lead, trail = self.around()
        return lead + body + trail


def _kind(text: str) -> SegmentKind:
    return "sentence" if any(c.isalnum() for c in text) else "other"


def _is_abbreviation(word: str, opens_line: bool) -> bool:
    """Whether a ``.`` right after ``word`` is not the end of a sentence."""
    word = word.lstrip(_OPENERS)
    if not word:
        return False
    lower = word.lower()
    if lower in ABBREVIATIONS:
        return True
    if len(word) == 1 and word.isalpha():  # an initial, or a list letter
        return True
    if _DOTTED.fullmatch(word):  # U.S, e.g, a.m
        return True
    # a list number or numeral opening its line: "1. First", "iv. Fourth"
    return opens_line and ((word.isdigit() and len(word) <= 3) or bool(_ROMAN.fullmatch(word)))


class SentenceSplitter:
    """Cuts text fed in pieces into :class:`Segment` objects (see the module docstring for the rules)."""

    def __init__(self, max_chars: int = DEFAULT_MAX_CHARS) -> None:
        if max_chars < 1:
            raise ValueError("max_chars must be at least 1")
        self.max_chars = max_chars
        self._buf = ""
        #: Whether the buffer starts at the start of a line (a fence can open only there).
        self._line_start = True
        #: Where the prose scan of the buffer resumes, and whether that point is inside an inline code span.
        self._pos = 0
        self._inline = False
        #: Inside a fenced block: the newline before the last line not yet seen whole (the closing-fence scan resumes
        #: there, so a long block costs linear time).
        self._code_scan = 0

    def feed(self, text: str) -> list[Segment]:
        """Add the next piece of the answer; the segments it completes (possibly none)."""
        if not text:
            return []
        self._buf += text
        return self._drain(final=False)

    def finish(self) -> list[Segment]:
        """The end of the answer: the segments left (the last one may be unfinished text)."""
        return self._drain(final=True)

    @property
    def pending(self) -> str:
        """Text fed but not yet handed back in a segment."""
        return self._buf

    def _drain(self, final: bool) -> list[Segment]:
        out: list[Segment] = []
        while self._buf:
            cut = self._cut(final)
            if cut is None:
                break
            end, kind = cut
            text, self._buf = self._buf[:end], self._buf[end:]
            out.append(Segment(text, kind))
            self._line_start = "\n" in text[len(text.rstrip()) :] or (self._line_start and not text.strip())
            self._pos = 0
            self._code_scan = 0
            self._inline = False
        return out

    # ------------------------------------------------------------------ finding the end of the next segment

    def _cut(self, final: bool) -> tuple[int, SegmentKind] | None:
        """``(end, kind)`` of the segment at the start of the buffer, or None while that is undecided."""
        buf = self._buf
        n = len(buf)
        start = n - len(buf.lstrip())
        if start == n:  # only whitespace so far
            return (n, "other") if final else None
        opens_line = self._line_start or "\n" in buf[:start]
        if opens_line:
            head = buf[start : start + 3]
            if head in _FENCES:
                return self._code(start, final)
            if len(head) < 3 and not final and any(f.startswith(head) for f in _FENCES):
                return None  # "`" or "``" at the end: perhaps a fence
        return self._prose(start, opens_line, final)

    def _code(self, start: int, final: bool) -> tuple[int, SegmentKind] | None:
        """A fenced block from ``start``: it ends after its closing fence line (or with the answer)."""
        buf = self._buf
        n = len(buf)
        char = buf[start]
        width = start
        while width < n and buf[width] == char:
            width += 1
        width -= start
        # resume at the newline before the last line that was incomplete when the block was last scanned
        line_end = buf.find("\n", max(start, self._code_scan))
        while line_end >= 0:
            begin = line_end + 1
            self._code_scan = line_end
            line_end = buf.find("\n", begin)
            line = (buf[begin:] if line_end < 0 else buf[begin:line_end]).strip()
            closing = len(line) >= width and line == char * len(line)
            if closing and line_end >= 0:
                return line_end + 1, "code"
            if closing and final:
                return n, "code"
        return (n, "code") if final else None

    def _whitespace_end(self, i: int) -> int:
        buf = self._buf
        n = len(buf)
        while i < n and buf[i].isspace():
            i += 1
        return i

    def _prose(self, start: int, opens_line: bool, final: bool) -> tuple[int, SegmentKind] | None:
        buf = self._buf
        n = len(buf)
        i = max(self._pos, start)
        inline = self._inline
        bound = start + self.max_chars
        while i < n:
            if i >= bound:
                return self._bounded(start, bound, final)
            c = buf[i]
            if c == "`":
                while i < n and buf[i] == "`":
                    i += 1
                inline = not inline
                continue
            if c == "\n":
                inline = False
                end = self._whitespace_end(i)
                if end == n and not final:
                    return self._wait(i, inline)
                return end, _kind(buf[:end])
            if inline or (c not in _LATIN_END and c not in _CJK_END):
                i += 1
                continue
            # terminal punctuation: the run, then closing marks
            j = i
            while j < n and (buf[j] in _LATIN_END or buf[j] in _CJK_END):
                j += 1
            k = j
            while k < n and buf[k] in _CLOSERS:
                k += 1
            if k == n:
                if not final:
                    return self._wait(i, inline)
                return n, _kind(buf)
            cjk = buf[j - 1] in _CJK_END
            if not cjk and not buf[k].isspace():  # 3.14, v1.2, example.com, e.g.x: not an end
                i = k
                continue
            end = self._whitespace_end(k)
            if end == n and not final:
                return self._wait(i, inline)
            if cjk or end == n or "\n" in buf[k:end]:
                return end, _kind(buf[:end])
            if buf[end].islower():  # "approx. three", "Well... maybe": the sentence goes on
                i = end
                continue
            if j - i == 1 and c == ".":
                word_start = i
                while word_start > start and not buf[word_start - 1].isspace():
                    word_start -= 1
                if _is_abbreviation(buf[word_start:i], opens_line and word_start == start):
                    i = end
                    continue
            return end, _kind(buf[:end])
        if n >= bound:
            return self._bounded(start, bound, final)
        if final:
            return n, _kind(buf)
        return self._wait(n, inline)

    def _wait(self, pos: int, inline: bool) -> tuple[int, SegmentKind] | None:
        """Undecided (None): the next scan resumes at ``pos`` (the start of what was undecided)."""
        self._pos = pos
        self._inline = inline
        return None

    def _bounded(self, start: int, bound: int, final: bool) -> tuple[int, SegmentKind] | None:
        """No boundary within ``max_chars``: cut at the last whitespace before ``bound``, else at ``bound``."""
        buf = self._buf
        cut = bound
        for p in range(bound - 1, start, -1):
            if buf[p].isspace():
                cut = self._whitespace_end(p)
                break
        if cut == len(buf) and not final:
            return self._wait(start, False)
        return cut, _kind(buf[:cut])


def split_sentences(text: str, max_chars: int = DEFAULT_MAX_CHARS) -> list[Segment]:
    """The segments of a whole ``text`` (what a :class:`SentenceSplitter` fed all of it at once gives)."""
    splitter = SentenceSplitter(max_chars)
    return splitter.feed(text) + splitter.finish()
