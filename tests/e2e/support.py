"""End-to-end support: real fake-upstream and gateway processes on free ports, and assertion helpers.

Every process is started from the repository root with ``sys.executable`` (the fake upstream as
``python -m tests.fakes.upstream``, the gateway as ``python -m gateway serve``), waited for with a deadline
(the error names the process and shows its log), and stopped at teardown with SIGTERM, then SIGKILL.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import openai
import yaml
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0


# --------------------------------------------------------------------------------------------- helpers


def free_port() -> int:
    """A TCP port nothing listens on right now (bound once, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def wait_for(
    predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05, what: str = "condition"
) -> Any:
    """Poll ``predicate`` until it returns a truthy value (returned), or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while True:
        try:
            value = predicate()
        except Exception as exc:  # the predicate may fail while a process comes up
            last_exc = exc
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            suffix = f" (last error: {last_exc!r})" if last_exc is not None else ""
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}{suffix}")
        time.sleep(interval)


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The test's environment minus anything that would change a gateway's configuration behind our back."""
    env = {
        k: v for k, v in os.environ.items()
        if not k.startswith("ALIGNGATE_") and k not in ("PROMETHEUS_MULTIPROC_DIR", "VLLM_API_KEY")
    }
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def parse_metrics(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Prometheus exposition text as ``{(sample name, frozenset(labels)): value}``."""
    out: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def metric_sum(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    """Sum of every sample called ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, lbl), v in samples.items() if n == name and want <= lbl)


def assert_openai_error(resp: httpx.Response, status: int, code: Any = ..., type_: str | None = None) -> dict[str, Any]:
    """The response is an OpenAI-shaped error with ``status``; returns its ``error`` object."""
    text = resp.text
    assert "Traceback" not in text, text
    assert resp.status_code == status, (resp.status_code, text)
    assert resp.headers["content-type"].startswith("application/json"), resp.headers
    body = resp.json()
    assert set(body) == {"error"}, body
    err = body["error"]
    assert set(err) >= {"message", "type", "param", "code"}, err
    assert isinstance(err["message"], str) and err["message"], err
    assert isinstance(err["type"], str) and err["type"], err
    if code is not ...:
        assert err["code"] == code, err
    if type_ is not None:
        assert err["type"] == type_, err
    result: dict[str, Any] = err
    return result


def sse_data(raw: bytes) -> list[str]:
    """The ``data:`` payloads of a complete SSE byte stream, in order."""
    out: list[str] = []
    for block in raw.decode("utf-8").replace("\r\n", "\n").split("\n\n"):
        lines = [ln[5:].lstrip(" ") for ln in block.split("\n") if ln.startswith("data:")]
        if lines:
            out.append("\n".join(lines))
    return out


# --------------------------------------------------------------------------------------------- processes


class ManagedProcess:
    """A child process whose stdout/stderr go to a log file; ``stop`` is SIGTERM, then SIGKILL."""

    def __init__(self, name: str, args: list[str], log_path: Path, env: dict[str, str], *, pipe_stdout: bool) -> None:
        self.name = name
        self.args = args
        self.log_path = log_path
        self._log_file = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(
            args,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if pipe_stdout else self._log_file,
            stderr=self._log_file,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def fail(self, why: str) -> AssertionError:
        return AssertionError(f"{self.name} (pid {self.pid}, {' '.join(self.args)}): {why}\n--- log ---\n{self.log()}")

    def send(self, sig: int) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL and reap (a crash, as far as its peers can tell)."""
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait(STOP_TIMEOUT_S)

    def wait(self, timeout: float) -> int:
        return self.popen.wait(timeout)

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(STOP_TIMEOUT_S)
        if self.popen.stdout is not None:
            self.popen.stdout.close()
        self._log_file.close()

    def read_ready_port(self) -> int:
        """The port of the ``READY <port>`` line the process prints first on stdout (``pipe_stdout``)."""
        assert self.popen.stdout is not None
        fd = self.popen.stdout.fileno()
        buf = b""
        deadline = time.monotonic() + START_TIMEOUT_S
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while b"\n" not in buf:
                left = deadline - time.monotonic()
                if left <= 0:
                    self.stop()
                    raise self.fail(f"no READY line within {START_TIMEOUT_S:g}s (stdout so far: {buf!r})")
                if sel.select(min(left, 0.2)):
                    chunk = os.read(fd, 4096)
                    if not chunk:
                        self.stop()
                        raise self.fail(f"exited with {self.popen.poll()} before READY (stdout: {buf!r})")
                    buf += chunk
        line = buf.split(b"\n", 1)[0].decode()
        if not line.startswith("READY "):
            self.stop()
            raise self.fail(f"unexpected first line {line!r}")
        return int(line.split()[1])


class Fake(ManagedProcess):
    """``python -m tests.fakes.upstream``; ready once it prints ``READY <port>``."""

    def __init__(self, name: str, log_dir: Path, port: int = 0, extra_args: list[str] | None = None,
                 env: dict[str, str] | None = None) -> None:
        args = [sys.executable, "-m", "tests.fakes.upstream", "--host", HOST, "--port", str(port), "--name", name]
        args += extra_args or []
        super().__init__(f"fake {name}", args, log_dir / f"fake-{name}-{time.monotonic_ns()}.log",
                         clean_env(env), pipe_stdout=True)
        self.replica_name = name
        self.port = self.read_ready_port()
        self.url = f"http://{HOST}:{self.port}"
        self.v1 = f"{self.url}/v1"
        self._http = httpx.Client(base_url=self.url, timeout=10.0)

    def stats(self) -> dict[str, int]:
        data: dict[str, int] = self._http.get("/_fake/stats").json()
        return data

    def requests(self) -> list[dict[str, Any]]:
        data: list[dict[str, Any]] = self._http.get("/_fake/requests").json()
        return data

    def posts(self) -> list[dict[str, Any]]:
        """Recorded POST /v1/... requests (probes and model listings left out)."""
        return [r for r in self.requests() if r["method"] == "POST"]

    def reset(self) -> None:
        self._http.post("/_fake/reset").raise_for_status()

    def stop(self) -> None:
        with contextlib.suppress(AttributeError):
            self._http.close()
        super().stop()


class Gateway(ManagedProcess):
    """``python -m gateway serve --config <yaml> --port P``; ready once ``/healthz`` answers 200."""

    def __init__(self, config: dict[str, Any], log_dir: Path, *, port: int | None = None, workers: int | None = None,
                 env: dict[str, str] | None = None, tag: str = "gw") -> None:
        self.port = port if port is not None else free_port()
        # the trace store: a SQLite file beside the logs unless the test configures one
        config = {**config, "store": config.get("store") or {}}
        # the start-up helper probe would add a request to every fake helper's count: on only where a test asks
        if config.get("helpers"):
            config["helpers"] = {"probe": False, **config["helpers"]}
        config["store"].setdefault("url", f"sqlite:///{log_dir / f'{tag}-{self.port}-{time.monotonic_ns()}.db'}")
        self.config = config
        self.db_path = Path(config["store"]["url"].removeprefix("sqlite:///"))
        cfg_path = log_dir / f"{tag}-{self.port}-{time.monotonic_ns()}.yaml"
        cfg_path.write_text(yaml.safe_dump(config), encoding="utf-8")
        #: The config file it serves (a test may rewrite it and send SIGHUP).
        self.config_path = cfg_path
        args = [sys.executable, "-m", "gateway", "serve", "--config", str(cfg_path), "--port", str(self.port)]
        if workers is not None:
            args += ["--workers", str(workers)]
        super().__init__(f"gateway {tag}", args, log_dir / f"{tag}-{self.port}-{time.monotonic_ns()}.log",
                         clean_env(env), pipe_stdout=False)
        self.url = f"http://{HOST}:{self.port}"
        self.v1 = f"{self.url}/v1"
        self.http = httpx.Client(base_url=self.url, timeout=30.0)
        self._wait_healthy()

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self.popen.poll() is not None:
                code = self.popen.returncode
                self.stop()
                raise self.fail(f"exited with {code} before /healthz answered")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise self.fail(f"/healthz did not answer 200 within {START_TIMEOUT_S:g}s")
            time.sleep(0.05)

    def client(self, **kwargs: Any) -> openai.OpenAI:
        kwargs.setdefault("api_key", "x")
        kwargs.setdefault("max_retries", 0)
        kwargs.setdefault("timeout", 30.0)
        return openai.OpenAI(base_url=self.v1, **kwargs)

    def aclient(self, **kwargs: Any) -> openai.AsyncOpenAI:
        kwargs.setdefault("api_key", "x")
        kwargs.setdefault("max_retries", 0)
        kwargs.setdefault("timeout", 30.0)
        return openai.AsyncOpenAI(base_url=self.v1, **kwargs)

    def metrics(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        resp = self.http.get("/metrics")
        assert resp.status_code == 200, resp.text
        return parse_metrics(resp.text)

    def log_lines(self, needle: str) -> list[str]:
        return [ln for ln in self.log().splitlines() if needle in ln]

    def access_lines(self, request_id: str) -> list[str]:
        return [ln for ln in self.log_lines(f"rid={request_id} ") if "aligngate.access" in ln]

    def wait_access_line(self, request_id: str, timeout: float = 5.0) -> str:
        """The access-log line of ``request_id`` (written just after the response ends, hence the poll)."""
        lines: list[str] = wait_for(
            lambda: self.access_lines(request_id), timeout, what=f"access line rid={request_id}"
        )
        return lines[0]

    def stop(self) -> None:
        with contextlib.suppress(AttributeError):
            self.http.close()
        super().stop()


def backend(name: str, *urls: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "urls": list(urls), **extra}


def gateway_config(*backends: dict[str, Any], **server: Any) -> dict[str, Any]:
    # A short graceful timeout keeps teardown quick when a test leaves a hung stream behind.
    return {"server": {"graceful_timeout_s": 2, **server}, "backends": list(backends)}


class Procs:
    """Starts processes for one scope and stops every one of them (in reverse order) at its end."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self._started: list[ManagedProcess] = []

    def fake(self, name: str, port: int = 0, *extra_args: str, env: dict[str, str] | None = None) -> Fake:
        fake = Fake(name, self.log_dir, port, list(extra_args), env)
        self._started.append(fake)
        return fake

    def gateway(self, config: dict[str, Any], **kwargs: Any) -> Gateway:
        last: AssertionError | None = None
        for _ in range(3):  # a free port can be taken between free_port() and the bind: try another
            try:
                gw = Gateway(config, self.log_dir, **kwargs)
            except AssertionError as exc:
                if "address already in use" not in str(exc).lower() or "port" in kwargs:
                    raise
                last = exc
                continue
            self._started.append(gw)
            return gw
        assert last is not None
        raise last

    def stop_all(self) -> None:
        for proc in reversed(self._started):
            with contextlib.suppress(Exception):
                proc.stop()
        self._started.clear()




class Stack:
    """The shared set-up: gateway ``gw`` with backends ``alpha`` -> fake ``a`` and ``beta`` -> fake ``b``."""

    def __init__(self, a: Fake, b: Fake, gw: Gateway) -> None:
        self.a = a
        self.b = b
        self.gw = gw


class HangingUpstream:
    """A TCP server that plays an upstream which never answers a POST, to observe the gateway hanging up.

    ``GET`` requests (readiness probes) get a 200 model list; a ``POST`` is read in full, counted in
    ``received``, and then left unanswered until the peer closes the connection, counted in ``closed``.
    """

    def __init__(self) -> None:
        self._sock = socket.create_server((HOST, 0))
        self.port: int = self._sock.getsockname()[1]
        self.v1 = f"http://{HOST}:{self.port}/v1"
        self.received = 0
        self.closed = 0
        self._lock = threading.Lock()
        self._stopped = False
        threading.Thread(target=self._accept, name="hanging-upstream", daemon=True).start()

    def _accept(self) -> None:
        while not self._stopped:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(60)
        with conn:
            try:
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                head, _, body = data.partition(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                length = 0
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value.strip())
                while len(body) < length:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    body += chunk
                if lines[0].startswith("GET "):
                    payload = b'{"object":"list","data":[]}'
                    conn.sendall(
                        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
                        b"Content-Length: " + str(len(payload)).encode() + b"\r\n\r\n" + payload
                    )
                    return
                with self._lock:
                    self.received += 1
            except OSError:
                return
            try:
                while conn.recv(65536):  # hold the request until the gateway hangs up (EOF or reset)
                    pass
            except TimeoutError:
                return
            except OSError:
                pass
            with self._lock:
                self.closed += 1

    def stop(self) -> None:
        self._stopped = True
        self._sock.close()
