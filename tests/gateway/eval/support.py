"""Support of the ``aligngate eval`` tests: the fake judge as a process, running the command as a process, and
gateway configs whose backend and helpers are fake upstream processes."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.e2e.support import HOST, ROOT, ManagedProcess, clean_env

#: What the fake helpers answer: long enough to pass the rewriter's guards (at most 6x and at least half the
#: prompt's words), different from every backend answer.
HELPER_REPLY = "Please explain this clearly and helpfully, step by step, with a short example where it helps."


class FakeJudge(ManagedProcess):
    """``python -m tests.fakes.judge``; ready once it prints ``READY <port>``."""

    def __init__(self, log_dir: Path, script: dict[str, Any] | None = None) -> None:
        path = log_dir / f"judge-script-{time.monotonic_ns()}.json"
        path.write_text(json.dumps(script or {}), encoding="utf-8")
        args = [sys.executable, "-m", "tests.fakes.judge", "--host", HOST, "--port", "0", "--script", str(path)]
        super().__init__(
            "fake judge", args, log_dir / f"judge-{time.monotonic_ns()}.log", clean_env(), pipe_stdout=True
        )
        self.port = self.read_ready_port()
        self.v1 = f"http://{HOST}:{self.port}/v1"
        self._http = httpx.Client(base_url=f"http://{HOST}:{self.port}", timeout=10.0)

    def calls(self) -> int:
        n: int = self._http.get("/_judge/calls").json()["calls"]
        return n

    def script(self, script: dict[str, Any]) -> None:
        self._http.post("/_judge/script", json=script).raise_for_status()

    def reset(self) -> None:
        self._http.post("/_judge/reset").raise_for_status()

    def stop(self) -> None:
        self._http.close()
        super().stop()


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def headline(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.out.strip().splitlines()[-1])
        return data


def eval_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = clean_env(extra)
    env["PYTHONPATH"] = str(ROOT)
    return env


def _default_sigint() -> None:
    # A suite started in the background by a non-interactive shell ignores SIGINT, and an ignored signal stays
    # ignored across exec: the eval would never see the Ctrl-C a test sends it. Start it as a terminal would.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_eval(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """``python -m gateway eval ARGS`` as its own process (``env``: extra variables), SIGINT at its default."""
    return subprocess.Popen(
        [sys.executable, "-m", "gateway", "eval", *args],
        cwd=cwd,
        env=eval_env(env),
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        preexec_fn=_default_sigint,
    )


def run_eval(*args: str, cwd: Path, timeout: float = 120.0, env: dict[str, str] | None = None) -> Result:
    proc = start_eval(*args, cwd=cwd, env=env)
    out, err = proc.communicate(timeout=timeout)
    return Result(proc.returncode, out, err)


def interrupt(proc: subprocess.Popen[str], timeout: float = 30.0) -> Result:
    """SIGINT (Ctrl-C) to a running eval, then its result."""
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=timeout)
    return Result(proc.returncode, out, err)


def write_yaml(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def gateway_yaml(path: Path, backend_v1: str, helper_v1: str | None = None) -> Path:
    """A gateway config: backend ``m`` on ``backend_v1``; both helpers on ``helper_v1`` when given."""
    config: dict[str, Any] = {"backends": [{"name": "m", "urls": [backend_v1]}]}
    if helper_v1 is not None:
        config["helpers"] = {
            "rewriter": {"url": helper_v1, "model": "bpo", "timeout_s": 10},
            "aligner": {"url": helper_v1, "model": "aligner", "timeout_s": 10},
        }
    return write_yaml(path, config)


def prompts_jsonl(path: Path, prompts: list[str]) -> Path:
    path.write_text(
        "".join(json.dumps({"id": f"p{i}", "prompt": p}) + "\n" for i, p in enumerate(prompts)), encoding="utf-8"
    )
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
