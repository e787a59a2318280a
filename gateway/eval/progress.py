"""A progress bar on stderr: redrawn in place on a terminal, plain lines otherwise (logs, CI, pipes).

On a terminal the bar is redrawn at most every 0.1 s; elsewhere a line is printed when the work starts, at each
further tenth done (or every 30 s, whichever comes first), and when it ends, so a log stays short and readable.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["Progress"]

_WIDTH = 28


class Progress:
    def __init__(self, label: str, total: int, stream: TextIO | None = None) -> None:
        self.label = label
        self.total = total
        self.done = 0
        self.notes: dict[str, int] = {}
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._start = time.monotonic()
        self._last_draw = 0.0
        self._last_tenth = -1
        self._closed = False
        self._draw(force=True)

    def advance(self, n: int = 1, note: str | None = None) -> None:
        self.done += n
        if note is not None:
            self.notes[note] = self.notes.get(note, 0) + n
        self._draw()

    def _line(self) -> str:
        elapsed = time.monotonic() - self._start
        notes = "".join(f", {k} {v}" for k, v in self.notes.items())
        eta = ""
        if 0 < self.done < self.total and elapsed > 1:
            left = elapsed / self.done * (self.total - self.done)
            eta = f", ~{left:.0f}s left"
        return f"{self.label}: {self.done}/{self.total}{notes} ({elapsed:.0f}s{eta})"

    def _draw(self, force: bool = False) -> None:
        if self._closed:
            return
        now = time.monotonic()
        if self.tty:
            if not force and now - self._last_draw < 0.1 and self.done < self.total:
                return
            share = self.done / self.total if self.total else 1.0
            filled = int(share * _WIDTH)
            bar = "#" * filled + "." * (_WIDTH - filled)
            self.stream.write(f"\r[{bar}] {self._line()}\x1b[K")
            self.stream.flush()
            self._last_draw = now
            return
        tenth = int(10 * self.done / self.total) if self.total else 10
        if force or tenth > self._last_tenth or now - self._last_draw >= 30.0:
            self.stream.write(self._line() + "\n")
            self.stream.flush()
            self._last_tenth = tenth
            self._last_draw = now

    def close(self) -> None:
        if self._closed:
            return
        if self.tty:
            self._draw(force=True)
            self.stream.write("\n")
            self.stream.flush()
        elif self._last_tenth < 10 or self.done < self.total:
            self.stream.write(self._line() + "\n")
            self.stream.flush()
        self._closed = True
