"""Spill files: where records wait, as JSON lines, while the database cannot take them.

Each process appends to its own file ``<base>.<pid>.jsonl`` and holds an exclusive ``flock`` on it while it
is open, so that several workers (or replicas sharing a volume) never replay a file that is still being
written. ``claim`` hands the replayer every file it may take: its own (renamed to ``*.replaying`` first, the
lock kept, so new spills start a fresh file) and any file no live process holds (a crashed or stopped
process's, or a replay that failed half-way). Replays are idempotent (rows are inserted or ignored by id),
so a file replayed twice after a crash duplicates nothing.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import orjson

logger = logging.getLogger(__name__)


class SpillFiles:
    def __init__(self, base: str | Path) -> None:
        base = Path(base)
        self.dir = base.parent
        self.stem = base.name
        self._fh: IO[bytes] | None = None
        self._own: Path | None = None

    def _own_path(self) -> Path:
        return self.dir / f"{self.stem}.{os.getpid()}.jsonl"

    def append(self, records: list[tuple[str, dict[str, Any]]]) -> None:
        """Append ``(table, row)`` records and fsync; raises OSError when the file cannot be written."""
        if self._fh is None:
            self.dir.mkdir(parents=True, exist_ok=True)
            path = self._own_path()
            fh = open(path, "a+b")  # noqa: SIM115 - kept open (and locked) across calls
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                fh.close()
                raise
            self._fh, self._own = fh, path
        data = b"".join(orjson.dumps({"table": table, "row": row}) + b"\n" for table, row in records)
        self._fh.write(data)
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def pending(self) -> bool:
        """Whether any spill file (this process's or another's) exists."""
        try:
            return any(self.dir.glob(f"{self.stem}.*.jsonl")) or any(self.dir.glob(f"{self.stem}.*.replaying"))
        except OSError:
            return False

    def claim(self) -> list[tuple[Path, IO[bytes]]]:
        """Lock and return the files to replay (see the module docstring); ``release`` or ``done`` each."""
        claimed: list[tuple[Path, IO[bytes]]] = []
        if self._fh is not None and self._own is not None:
            target = self.dir / f"{self.stem}.{os.getpid()}.{uuid.uuid4().hex[:8]}.replaying"
            try:
                os.rename(self._own, target)
            except OSError as exc:
                logger.warning("cannot rename spill file %s for replay: %s", self._own, exc)
            else:
                claimed.append((target, self._fh))
                self._fh = self._own = None
        taken = {p for p, _ in claimed}
        try:
            candidates = sorted(self.dir.glob(f"{self.stem}.*.replaying")) + sorted(
                self.dir.glob(f"{self.stem}.*.jsonl")
            )
        except OSError:
            candidates = []
        for path in candidates:
            if path in taken or path == self._own:
                continue
            try:
                fh = open(path, "a+b")  # noqa: SIM115 - returned to the caller
            except OSError:
                continue
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                if os.stat(path).st_ino != os.fstat(fh.fileno()).st_ino:
                    raise FileNotFoundError(path)  # renamed or replaced since: someone else has it
            except OSError:
                fh.close()
                continue
            claimed.append((path, fh))
        return claimed

    @staticmethod
    def records(fh: IO[bytes]) -> Iterator[tuple[str, dict[str, Any]] | None]:
        """The records of a claimed file, from its start; None for a line that does not parse (a torn write)."""
        fh.seek(0)
        for line in fh:
            if not line.strip():
                continue
            try:
                item = orjson.loads(line)
                yield str(item["table"]), dict(item["row"])
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                yield None

    @staticmethod
    def done(path: Path, fh: IO[bytes]) -> None:
        """The file was replayed: delete it (under its lock), then release it."""
        with contextlib.suppress(OSError):
            os.unlink(path)
        fh.close()

    @staticmethod
    def release(fh: IO[bytes]) -> None:
        fh.close()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = self._own = None
