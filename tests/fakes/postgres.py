"""A throwaway real PostgreSQL server for the trace-store tests (not a fake: the Debian ``postgresql`` package).

``LocalPostgres.find()`` returns None (with the reason in ``LocalPostgres.missing``) when no server binaries
are installed, so the tests that need one skip. The cluster lives in a temporary directory, listens on
127.0.0.1 on a free port with ``trust`` authentication, and runs as the ``postgres`` user when the tests run
as root (PostgreSQL refuses root). ``stop``/``start`` make a real outage.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class LocalPostgres:
    missing = ""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="aligngate-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self._demote: Callable[[], None] | None = None
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            os.chown(self.root, user.pw_uid, user.pw_gid)

            def demote() -> None:
                os.setgid(user.pw_gid)
                os.setuid(user.pw_uid)

            self._demote = demote
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
        self.start()

    @classmethod
    def find(cls) -> LocalPostgres | None:
        candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        found = shutil.which("initdb")
        if found:
            candidates.append(found)
        if not candidates:
            cls.missing = "no PostgreSQL server installed (apt-get install postgresql)"
            return None
        if os.geteuid() == 0:
            try:
                pwd.getpwnam("postgres")
            except KeyError:
                cls.missing = "running as root without a `postgres` user to run the server as"
                return None
        try:
            return cls(Path(candidates[-1]).parent)
        except (OSError, subprocess.SubprocessError) as exc:
            cls.missing = f"could not start a PostgreSQL server: {exc}"
            return None

    def _run(self, tool: str, *args: str) -> None:
        subprocess.run([str(self.bindir / tool), *args], check=True, capture_output=True, timeout=60,
                       preexec_fn=self._demote, cwd=self.root)

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.root / "log"), "-w", "start")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def destroy(self) -> None:
        with contextlib.suppress(subprocess.SubprocessError):
            self.stop()
        shutil.rmtree(self.root, ignore_errors=True)
