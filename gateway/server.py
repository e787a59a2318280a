"""Runs the gateway under uvicorn (uvloop + httptools), with N worker processes and graceful shutdown.

Before uvicorn starts workers this sets ``PROMETHEUS_MULTIPROC_DIR`` (N > 1) and hands the resolved settings
to the workers through the environment. On SIGTERM/SIGINT uvicorn stops accepting connections and lets
in-flight requests, streams included, finish for up to ``server.graceful_timeout_s`` seconds.
"""

from __future__ import annotations

import ipaddress
import logging
import logging.config
import math
import os
import shutil
import signal
import tempfile
import threading
from types import FrameType
from typing import Any

import uvicorn

from gateway.config import RESOLVED_ENV, Settings, dump_resolved
from gateway.connections import PROTOCOL

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


def run(settings: Settings) -> None:
    server = settings.server
    logging.config.dictConfig(log_config(server.log_level))
    if not server.api_keys and not is_loopback(server.host):
        logger.warning(
            "listening on %s with no server.api_keys: anyone who can reach this port can use the backends",
            server.host,
        )
    os.environ[RESOLVED_ENV] = dump_resolved(settings)
    multiproc_dir: str | None = None
    if server.workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiproc_dir = tempfile.mkdtemp(prefix="aligngate-prom-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = multiproc_dir
    main_thread = threading.current_thread() is threading.main_thread()  # signal handlers: main thread only
    previous = signal.signal(signal.SIGTERM, _exit_cleanly) if main_thread else None
    try:
        uvicorn.run(
            "gateway.app:app_from_env",
            factory=True,
            host=server.host,
            port=server.port,
            workers=server.workers,
            loop="uvloop",
            http=PROTOCOL,  # httptools, with a header deadline and a header size cap (gateway/connections.py)
            access_log=False,
            log_config=log_config(server.log_level),
            # Rounded up, never to None (which would wait for ever): uvicorn types this as a whole number.
            timeout_graceful_shutdown=math.ceil(server.graceful_timeout_s),
            timeout_keep_alive=server.keep_alive_timeout_s,
            limit_concurrency=server.max_connections or None,
            server_header=False,
            date_header=False,
        )
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
        if multiproc_dir is not None:
            shutil.rmtree(multiproc_dir, ignore_errors=True)
