"""The output folder's append-only record files: ``answers.jsonl`` and ``judgements.jsonl``.

Contract:

* **Append only, one complete line per record, flushed at once.** A run stopped at any point (Ctrl-C, a kill,
  a crash) leaves every record written so far readable; at worst the last line is torn.
* **Opening repairs a torn tail.** :meth:`RecordFile.open` reads every line that parses as a record (keyed by
  ``record.key``; a later line with the same key wins), skips the ones that do not (counted in ``skipped``),
  and cuts a last line without its newline off the file before appending, so a new record never glues onto
  half of an old one. Nothing else is ever rewritten or deleted: a cached answer is never lost.
* **Reuse is by key.** The key covers everything the record depends on (see :mod:`gateway.eval.runner`), so
  a record found under its key is valid as it is; a changed setting gives a new key and a new record.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Generic, TextIO

from gateway.eval.records import R, from_line, to_line

__all__ = ["RecordFile"]

logger = logging.getLogger(__name__)


class RecordFile(Generic[R]):
    """Records of one type in one JSONL file, by key; ``add`` appends and flushes."""

    def __init__(self, path: Path, cls: type[R]) -> None:
        self.path = path
        self.cls: type[R] = cls
        self.records: dict[str, R] = {}
        #: Lines that did not parse (a torn last line, a hand edit): skipped, never deleted.
        self.skipped = 0
        self._file: TextIO | None = None

    def open(self) -> RecordFile[R]:
        """Read what the file holds (if anything) and open it for appending."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            data = self.path.read_bytes()
            complete = data.rfind(b"\n") + 1
            if complete < len(data):  # a torn last line: cut it off so the next record starts on its own line
                logger.warning("%s: ignoring a torn last line (%d bytes)", self.path, len(data) - complete)
                self.skipped += 1
                with open(self.path, "r+b") as f:
                    f.truncate(complete)
            for number, raw in enumerate(data[:complete].decode("utf-8", errors="replace").splitlines(), 1):
                if not raw.strip():
                    continue
                try:
                    record = from_line(self.cls, raw)
                except ValueError as exc:
                    logger.warning("%s line %d skipped: %s", self.path, number, exc)
                    self.skipped += 1
                    continue
                self.records[record.key] = record
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        return self

    def get(self, key: str) -> R | None:
        return self.records.get(key)

    def add(self, record: R) -> None:
        """Append ``record`` as one line and flush it to the operating system."""
        assert self._file is not None, "open() first"
        self._file.write(to_line(record))
        self._file.flush()
        self.records[record.key] = record

    def close(self) -> None:
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None

    def __len__(self) -> int:
        return len(self.records)
