"""Runs the gateway under uvicorn (uvloop + httptools), with N worker processes and graceful shutdown.

Before uvicorn starts workers this sets ``PROMETHEUS_MULTIPROC_DIR`` (N > 1) and hands the resolved settings
to the workers through the environment, with where they came from (``gateway/reload.py``). On SIGTERM/SIGINT
uvicorn stops accepting connections and lets in-flight requests, streams included, finish for up to
``server.graceful_timeout_s`` seconds. SIGHUP reloads the API keys and rate limits in each worker: with N > 1
the supervising process forwards it to every worker (uvicorn's own supervisor would restart them all) and
resolves the settings again for workers it starts later. A worker that dies (even by SIGKILL) is replaced by uvicorn's
supervisor. Workers start with SIGHUP blocked and ignored (what a process started by exec inherits, where a handler
would become the default action and a SIGHUP during its start-up would kill it): one sent before a worker is ready
waits, and is handled once the worker has installed its reload (``gateway/reload.py``).
"""

from __future__ import annotations

import contextlib
import inspect
import ipaddress
import logging
import logging.config
import math
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any, cast

import uvicorn
from uvicorn.supervisors import Multiprocess

from gateway.config import RESOLVED_ENV, ConfigError, Settings, dump_resolved
from gateway.connections import PROTOCOL
from gateway.reload import SOURCE_ENV, ConfigSource, reread

logger = logging.getLogger(__name__)


def log_config(level: str) -> dict[str, Any]:
    """logging.dictConfig for uvicorn and the gateway's own loggers (one access line per request)."""
    lvl = level.upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "plain": {
                "()": "gateway.context.RequestIdFormatter",
                "fmt": "%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s",
            },
        },
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "plain", "stream": "ext://sys.stderr"}},
        "loggers": {
            "aligngate": {"handlers": ["stderr"], "level": lvl, "propagate": False},
            "gateway": {"handlers": ["stderr"], "level": lvl, "propagate": False},
            "models": {"handlers": ["stderr"], "level": lvl, "propagate": False},
            "uvicorn": {"handlers": ["stderr"], "level": "INFO" if lvl == "DEBUG" else lvl, "propagate": False},
            "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": False},
        },
    }


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _exit_cleanly(signum: int, frame: FrameType | None) -> None:
    """SIGTERM outside uvicorn's own handler: exit with status 0.

    uvicorn drains in-flight requests on SIGTERM, then restores the previous handler and re-raises the signal;
    with the default handler the process would end killed by SIGTERM (status 143) after a clean shutdown.
    """
    raise SystemExit(0)


@contextlib.contextmanager
def _sighup_held() -> Iterator[None]:
    """Start workers inside this: SIGHUP blocked and ignored in this process meanwhile, so that a worker started now
    inherits both (a SIGHUP sent to this process meanwhile waits, and is handled once the block is lifted)."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
    handler = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGHUP, handler)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})


class _Supervisor:
    """The supervising process of N workers: what it does on SIGHUP."""

    def __init__(self, source: ConfigSource, settings: Settings) -> None:
        self.source = source
        self.settings = settings

    def reload(self) -> None:
        """Resolve the settings again for workers started from now on (each running worker reloads on its own)."""
        try:
            reloaded = reread(self.source, self.settings)
        except ConfigError as exc:
            logger.error("SIGHUP: the config does not load; workers keep their keys and limits: %s", exc)
            return
        self.settings = reloaded.settings
        os.environ[RESOLVED_ENV] = dump_resolved(reloaded.settings)

    def multiprocess(self, config: uvicorn.Config, sock: Any) -> Multiprocess:
        """uvicorn's supervisor of ``config.workers`` processes, forwarding SIGHUP to them instead of restarting."""
        supervisor = self

        class Forwarding(Multiprocess):
            # every way uvicorn starts a worker: at start, replacing a dead one, SIGTTIN
            def init_processes(self) -> None:
                with _sighup_held():
                    super().init_processes()

            def keep_subprocess_alive(self) -> None:
                with _sighup_held():
                    super().keep_subprocess_alive()

            def handle_ttin(self) -> None:
                with _sighup_held():
                    super().handle_ttin()

            def handle_hup(self) -> None:
                supervisor.reload()
                logger.info("SIGHUP: forwarded to %d workers (each reloads its API keys and rate limits)",
                            len(self.processes))
                for process in self.processes:
                    if process.pid is not None:
                        os.kill(process.pid, signal.SIGHUP)

        if "target" in inspect.signature(Multiprocess.__init__).parameters:  # uvicorn before 0.50
            made: Multiprocess = cast(Any, Forwarding)(config, target=uvicorn.Server(config).run, sockets=[sock])
            return made
        return Forwarding(config, sockets=[sock])


def run(settings: Settings, source: ConfigSource | None = None) -> None:
    """Serve ``settings`` (resolved from ``source``, which SIGHUP reads again) until SIGTERM or SIGINT."""
    source = source or ConfigSource()
    server = settings.server
    logging.config.dictConfig(log_config(server.log_level))
    if not server.api_keys and not is_loopback(server.host):
        logger.warning(
            "listening on %s with no server.api_keys: anyone who can reach this port can use the backends",
            server.host,
        )
    os.environ[RESOLVED_ENV] = dump_resolved(settings)
    os.environ[SOURCE_ENV] = source.to_env()
    multiproc_dir: str | None = None
    if server.workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiproc_dir = tempfile.mkdtemp(prefix="aligngate-prom-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = multiproc_dir
    main_thread = threading.current_thread() is threading.main_thread()  # signal handlers: main thread only
    previous = signal.signal(signal.SIGTERM, _exit_cleanly) if main_thread else None
    previous_hup = signal.signal(signal.SIGHUP, signal.SIG_IGN) if main_thread else None  # workers handle it
    options: dict[str, Any] = {
        "factory": True,
        "host": server.host,
        "port": server.port,
        "workers": server.workers,
        "loop": "uvloop",
        "http": PROTOCOL,  # httptools, with a header deadline and a header size cap (gateway/connections.py)
        "access_log": False,
        "log_config": log_config(server.log_level),
        # Rounded up, never to None (which would wait for ever): uvicorn types this as a whole number.
        "timeout_graceful_shutdown": math.ceil(server.graceful_timeout_s),
        "timeout_keep_alive": server.keep_alive_timeout_s,
        "limit_concurrency": server.max_connections or None,
        "server_header": False,
        "date_header": False,
    }
    try:
        if server.workers > 1:
            config = uvicorn.Config("gateway.app:app_from_env", **options)
            _Supervisor(source, settings).multiprocess(config, config.bind_socket()).run()
        else:
            uvicorn.run("gateway.app:app_from_env", **options)
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
            signal.signal(signal.SIGHUP, previous_hup)
        if multiproc_dir is not None:
            shutil.rmtree(multiproc_dir, ignore_errors=True)
