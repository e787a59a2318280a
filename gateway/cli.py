"""The ``aligngate`` command line: ``aligngate serve [--config FILE] [--host H] [--port P] [--workers N]``."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from gateway import __version__
from gateway.config import ConfigError, check_servable, load_settings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aligngate", description="Inference-time alignment gateway.")
    parser.add_argument("--version", action="version", version=f"aligngate {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the OpenAI-compatible gateway")
    serve.add_argument(
        "--config",
        help="YAML config file (keys: see README); env ALIGNGATE_<SECTION>__<KEY> overrides. "
        "Without it: the embedded default (SmolLM2-135M-Instruct in-process, both helpers on it)",
    )
    serve.add_argument("--host", help="listen address (server.host)")
    serve.add_argument("--port", type=int, help="listen port (server.port)")
    serve.add_argument("--workers", type=int, help="worker processes (server.workers)")
    serve.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="server.log_level")
    return parser


def _serve(args: argparse.Namespace) -> int:
    server: dict[str, Any] = {
        k: v for k, v in
        {"host": args.host, "port": args.port, "workers": args.workers, "log_level": args.log_level}.items()
        if v is not None
    }
    try:
        settings = load_settings(args.config, {"server": server} if server else None, embedded_default=True)
        check_servable(settings)
    except ConfigError as exc:
        print(f"aligngate: {exc}", file=sys.stderr)
        return 2
    from gateway import server as server_mod

    server_mod.run(settings)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    raise AssertionError(args.command)
