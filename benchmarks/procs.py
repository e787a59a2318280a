"""Processes the benchmarks start and stop: the fake OpenAI-compatible upstream, ``aligngate serve``, and
health waits. Shared by the benchmark scripts (run as ``python benchmarks/NAME.py``)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def tree(pid: int) -> list[int]:
    """``pid`` and its live descendants."""
    found, stack = [], [pid]
    while stack:
        p = stack.pop()
        found.append(p)
        try:
            stack += [int(c) for c in Path(f"/proc/{p}/task/{p}/children").read_text().split()]
        except OSError:
            continue
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    base_url: str  # ends in /v1
    log: Path

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(15)
            except subprocess.TimeoutExpired:
                self.popen.kill()


def wait_healthy(name: str, popen: subprocess.Popen[bytes], url: str, log: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if popen.poll() is not None:
            raise RuntimeError(f"{name} exited: {log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    popen.kill()
    raise RuntimeError(f"{name} did not become healthy in {timeout_s:.0f} s: {log.read_text()[-4000:]}")


def start_fake(workdir: Path, name: str, reply: str | None = None, extra: list[str] | None = None) -> Proc:
    """``tests/fakes/upstream.py`` on a free port (``reply``: every answer is exactly that text; ``extra``: more
    of its flags, such as ``--token-delay-s``)."""
    cmd = [sys.executable, "-m", "tests.fakes.upstream", "--port", "0", "--name", name]
    if reply is not None:
        cmd += ["--reply", reply]
    cmd += extra or []
    log = workdir / f"{name}.log"
    popen = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=log.open("wb"))
    assert popen.stdout is not None
    line = popen.stdout.readline().decode().strip()
    if not line.startswith("READY"):
        popen.kill()
        raise RuntimeError(f"fake {name} failed to start: {line!r} {log.read_text()}")
    return Proc(name, popen, f"http://127.0.0.1:{line.split()[1]}/v1", log)


def start_gateway(
    workdir: Path, config: str | None, *, env: dict[str, str] | None = None, timeout_s: float = 300,
    cwd: Path = ROOT,
) -> Proc:
    """``aligngate serve`` on a free port with ``config`` (YAML text; None: the embedded default), run from the
    source tree ``cwd`` (default: this checkout; another tree, e.g. a worktree of the previous commit, is put first
    on ``PYTHONPATH`` so that its code is the one imported)."""
    port = free_port()
    cmd = [sys.executable, "-m", "gateway", "serve", "--port", str(port), "--log-level", "warning"]
    if config is not None:
        path = workdir / "gateway.yaml"
        path.write_text(config)
        cmd += ["--config", str(path)]
    log = workdir / "gateway.log"
    tree = {} if cwd == ROOT else {"PYTHONPATH": str(cwd)}
    popen = subprocess.Popen(
        cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=log.open("wb"), env={**os.environ, **tree, **(env or {})}
    )
    url = f"http://127.0.0.1:{port}"
    wait_healthy("aligngate", popen, url + "/healthz", log, timeout_s)
    return Proc("aligngate", popen, url + "/v1", log)
