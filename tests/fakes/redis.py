"""A throwaway real Redis server for the rate-limit tests (not a fake: the Debian ``redis-server`` package).

``LocalRedis.find()`` returns None (with the reason in ``LocalRedis.missing``) when ``redis-server`` is not
installed, so the tests that need one skip (or fail in CI: ``tests/system.py``). The server listens on 127.0.0.1
on a free port, keeps nothing on disk, and runs in a temporary directory; ``kill`` (SIGKILL: a crash) and
``start`` (again on the same port, empty) make a real outage.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class LocalRedis:
    missing = ""

    def __init__(self, binary: str) -> None:
        self.binary = binary
        self.root = Path(tempfile.mkdtemp(prefix="aligngate-redis-"))
        self.port = _free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._proc: subprocess.Popen[bytes] | None = None
        self.start()

    @classmethod
    def find(cls) -> LocalRedis | None:
        binary = shutil.which("redis-server") or next(
            (p for p in ("/usr/bin/redis-server", "/usr/sbin/redis-server") if Path(p).is_file()), None)
        if binary is None:
            cls.missing = "no redis-server installed (apt-get install redis-server)"
            return None
        try:
            return cls(binary)
        except (OSError, subprocess.SubprocessError, TimeoutError) as exc:
            cls.missing = f"could not start redis-server: {exc}"
            return None

    def start(self, timeout: float = 10.0) -> None:
        """Start the server (empty) on ``port`` and wait until it answers PING."""
        log = open(self.root / "log", "ab")  # noqa: SIM115 - the child holds it; closed right after the start
        try:
            self._proc = subprocess.Popen(
                [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                 "--dir", str(self.root), "--protected-mode", "no"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=self.root,
            )
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while not self.ping():
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise TimeoutError(f"redis-server on port {self.port} did not answer PING:\n{self.log()}")
            time.sleep(0.02)

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def command(self, *args: str) -> bytes:
        """One command in RESP over a plain socket; the raw reply (enough for the tests' FLUSHALL, DBSIZE, ...)."""
        payload = f"*{len(args)}\r\n".encode() + b"".join(
            f"${len(a.encode())}\r\n".encode() + a.encode() + b"\r\n" for a in args)
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
            s.sendall(payload)
            time.sleep(0.02)
            return s.recv(1 << 20)

    def log(self) -> str:
        with contextlib.suppress(OSError):
            return (self.root / "log").read_text(errors="replace")
        return ""

    def kill(self) -> None:
        """SIGKILL and reap: a crash, as far as its clients can tell."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(10)

    def destroy(self) -> None:
        self.kill()
        shutil.rmtree(self.root, ignore_errors=True)
