"""The ``aligngate`` command line.

* ``aligngate serve [--config FILE] [--host H] [--port P] [--workers N]`` — run the gateway.
* ``aligngate ab report [--config FILE] [--store URL] [--experiment NAME] [--out DIR] [--since ISO]
  [--include-forced] [--planned-ratings N]`` — per-arm results of an experiment (:mod:`gateway.report.ab`); the
  arm weights of ``--config`` (when given) drive its sample-ratio-mismatch check.
* ``aligngate data export --kind {preferences,aligner,rewriter} [--config FILE] [--store URL] --out FILE.jsonl
  [--experiment NAME] [--since ISO]`` — training data for ``train/`` (:mod:`gateway.report.export`).
* ``aligngate eval --config EVAL.yaml [--out DIR] [--from-store URL [--experiment NAME]] [key=value ...]`` —
  offline pairwise evaluation of the arms (:mod:`gateway.eval`); 130 when interrupted (the run resumes).

Exit status: 0 done; 1 nothing to report, or an output that cannot be written; 2 a bad config, flag or store
(message on stderr, never a traceback). The report and export modules are imported only by their commands:
``serve`` must not import ``prometheus_client`` before it has set up multiprocess metrics.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from gateway import __version__
from gateway.config import ConfigError, Settings, load_settings
from gateway.reload import ConfigSource
from gateway.report import DEFAULT_PLANNED_N, EXPORT_KINDS


def _store_flags(parser: argparse.ArgumentParser, experiment_help: str) -> None:
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="YAML config file: its store.url is read (env ALIGNGATE_STORE__URL overrides); ab report also reads "
        "experiment.name and experiment.arms (the weights its sample-ratio-mismatch check expects)",
    )
    parser.add_argument(
        "--store",
        metavar="URL",
        help="trace store URL (sqlite:///aligngate.db, postgresql://...); default: the config's store.url",
    )
    parser.add_argument("--experiment", metavar="NAME", help=experiment_help)
    parser.add_argument(
        "--since", metavar="ISO", help="only requests from this time on (ISO 8601; UTC unless an offset is given)"
    )


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

    ab = sub.add_parser("ab", help="A/B experiment results from the trace store")
    ab_sub = ab.add_subparsers(dest="ab_command", metavar="{report}", required=True)
    report = ab_sub.add_parser(
        "report",
        help="per-arm results of an experiment (default: the most recent): report.md and report.png",
        description="Per-arm requests, error rate, latency, helper latency, thumbs-up rate (Wilson interval) and "
        "its difference against control (Newcombe interval, two-proportion z-test, Holm-adjusted, always-valid "
        "interval), guardrails (errors, refusals, aligner changes, latency), pairwise win rates, and a "
        "sample-ratio-mismatch check against --config's experiment.arms weights. Writes report.md and report.png "
        "into --out and prints the tables.",
    )
    _store_flags(report, "the experiment to report on (default: the one of the most recent request)")
    report.add_argument("--out", metavar="DIR", default="ab-report", help="output folder (default: ./ab-report)")
    report.add_argument(
        "--include-forced",
        action="store_true",
        help="include requests whose arm was forced with X-Aligngate-Arm (not randomised; left out by default)",
    )
    report.add_argument(
        "--planned-ratings", metavar="N", type=int, default=DEFAULT_PLANNED_N,
        help=f"ratings per arm the always-valid interval is tuned for (default {DEFAULT_PLANNED_N}); fix it "
        "before the experiment starts",
    )

    data = sub.add_parser("data", help="training data from the trace store")
    data_sub = data.add_subparsers(dest="data_command", metavar="{export}", required=True)
    export = data_sub.add_parser(
        "export",
        help="write preference, aligner or rewriter training rows (JSONL) for train/",
        description="Export the store's requests and feedback as JSONL that train/ reads "
        "(train.data.loaders.load_gateway_export). The rules of each kind are in the README.",
    )
    export.add_argument("--kind", required=True, choices=EXPORT_KINDS, help="what to export")
    _store_flags(export, "only this experiment's requests (default: every experiment)")
    export.add_argument("--out", metavar="FILE.jsonl", required=True, help="output file (written atomically)")

    train = sub.add_parser(
        "train",
        help="train a helper or the base model: sft, rm, dpo, kto, ppo (needs aligngate[local,train])",
        description="Train with a YAML recipe (train/recipes/); key=value arguments override recipe keys "
        "(dotted keys reach into sections, e.g. dataset.path=FILE max_steps=10 lora=false).",
    )
    train.add_argument("method", choices=["sft", "rm", "dpo", "kto", "ppo"], help="training method")
    train.add_argument("--config", metavar="RECIPE.yaml", help="recipe file (default: built-in defaults)")
    train.add_argument("overrides", nargs="*", metavar="key=value", help="recipe overrides")

    ev = sub.add_parser(
        "eval", help="offline pairwise evaluation: do the arms make answers better? (report.md, report.png)",
        description="Answer prompt sets on each arm (a running gateway, an in-process one, or two sides compared), "
        "judge each arm against the baseline (an LLM judge asked in both orders, a reward model), and report ΔWR with "
        "its bootstrap interval and the measures that need no judge. Answers and verdicts are cached in --out, "
        "so a rerun resumes. key=value arguments override config keys (dotted keys reach into sections).",
    )
    ev.add_argument("--config", metavar="EVAL.yaml",
                    help="eval config (keys: see README); default: dolly-eval on the embedded default, no judge")
    ev.add_argument("--out", metavar="DIR", default="eval-out", help="output folder (default: ./eval-out)")
    ev.add_argument("--from-store", metavar="URL",
                    help="judge shadow mode's corrections against the answers served, from this trace store "
                    "(read only)")
    ev.add_argument("--experiment", metavar="NAME", help="with --from-store: only this experiment's requests")
    ev.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    return parser


def _fail(message: str, status: int = 2) -> int:
    print(f"aligngate: {message}", file=sys.stderr)
    return status


def _serve(args: argparse.Namespace) -> int:
    server: dict[str, Any] = {
        k: v
        for k, v in {"host": args.host, "port": args.port, "workers": args.workers, "log_level": args.log_level}.items()
        if v is not None
    }
    source = ConfigSource(args.config, {"server": server} if server else None, embedded_default=True)
    try:
        settings = source.load()
    except ConfigError as exc:
        return _fail(str(exc))
    from gateway import server as server_mod

    server_mod.run(settings, source)
    return 0


class _Usage(Exception):
    """A bad flag or config: exit status 2."""


def _settings(args: argparse.Namespace) -> Settings:
    """The settings of --config (and the environment), with --store as the store URL when given."""
    if args.store is not None:
        scheme = args.store.split("://", 1)[0].split("+", 1)[0].lower() if "://" in args.store else ""
        if scheme not in ("sqlite", "postgresql", "postgres"):
            raise _Usage(f"--store must be a sqlite:///FILE or postgresql://... URL, not {args.store!r}")
    try:
        return load_settings(args.config, {"store": {"url": args.store}} if args.store else None)
    except ConfigError as exc:
        raise _Usage(str(exc)) from None


def _store(args: argparse.Namespace) -> tuple[str, float]:
    """The store URL (--store, else the config's store.url, else the default) and its connect timeout."""
    settings = _settings(args)
    return settings.store.url, settings.store.timeout_s


def _since(args: argparse.Namespace) -> float | None:
    from gateway.report.source import parse_since

    if args.since is None:
        return None
    try:
        return parse_since(args.since)
    except ValueError as exc:
        raise _Usage(str(exc)) from None


def _ab_report(args: argparse.Namespace) -> int:
    from gateway.report.ab import render_guardrails, render_pairwise, render_table, srm_line, write_report
    from gateway.report.abstats import ConfiguredExperiment, summarize
    from gateway.report.source import Selection, StoreError, format_time, read

    try:
        settings = _settings(args)
        since = _since(args)
    except _Usage as exc:
        return _fail(str(exc))
    if args.planned_ratings < 1:
        return _fail(f"--planned-ratings must be at least 1, not {args.planned_ratings}")
    # the arm weights are known only from a config the operator names (not from defaults)
    configured = None if args.config is None else ConfiguredExperiment(
        settings.experiment.name, dict(settings.experiment.arms)
    )
    try:
        snapshot = read(
            settings.store.url, Selection(args.experiment, since, args.include_forced), bodies=True,
            latest_by_default=True, timeout_s=settings.store.timeout_s,
        )
    except StoreError as exc:
        return _fail(str(exc))
    if not snapshot.requests:
        if snapshot.experiment is None:
            return _fail(f"nothing to report: the store {snapshot.url} has no requests yet", 1)
        what = f"experiment {snapshot.experiment!r}" + (f" since {format_time(since)}" if since is not None else "")
        if snapshot.forced_excluded:
            return _fail(
                f"nothing to report: {what} has only forced-arm requests ({snapshot.forced_excluded}); "
                "--include-forced includes them",
                1,
            )
        return _fail(f"nothing to report: {what} has no requests", 1)
    report = summarize(snapshot, since=since, include_forced=args.include_forced, configured=configured,
                       planned_n=args.planned_ratings)
    try:
        files = write_report(report, Path(args.out))
    except OSError as exc:
        return _fail(f"cannot write the report into {args.out}: {exc}", 1)
    print(
        f"experiment {report.experiment}: {sum(a.requests for a in report.arms)} requests, "
        f"{format_time(report.first)} to {format_time(report.last)}"
    )
    print(render_table(report))
    print()
    print(render_guardrails(report))
    pairs = render_pairwise(report)
    if pairs is not None:
        print()
        print(pairs)
    print()
    print(srm_line(report))
    written = f"{files.markdown}" + (f" and {files.png}" if files.png is not None else "")
    print(f"wrote {written}")
    if files.note is not None:
        print(f"note: {files.note}", file=sys.stderr)
    return 0


def _data_export(args: argparse.Namespace) -> int:
    from gateway.report.export import export
    from gateway.report.source import Selection, StoreError

    try:
        url, timeout_s = _store(args)
        since = _since(args)
    except _Usage as exc:
        return _fail(str(exc))
    out = Path(args.out)
    try:
        result = export(url, args.kind, out, Selection(args.experiment, since, True), timeout_s=timeout_s)
    except StoreError as exc:
        return _fail(str(exc))
    except OSError as exc:
        return _fail(f"cannot write {out}: {exc}", 1)
    print(result.summary(out))
    return 0


def _train(args: argparse.Namespace) -> int:
    """`aligngate train`: train/ (and torch, TRL) are imported only here, so the gateway stays light."""
    bad = [o for o in args.overrides if "=" not in o]
    if bad:
        return _fail(f"train: overrides must be key=value, got {' '.join(bad)}")
    try:
        from core.recipe import RecipeError
        from train.run import MethodUnavailable, run
    except ImportError as exc:
        return _fail(f"train needs the training extra: pip install 'aligngate[local,train]' ({exc})")
    try:
        run(args.method, args.config, args.overrides)
    except (RecipeError, MethodUnavailable) as exc:
        return _fail(str(exc))
    return 0


def _eval(args: argparse.Namespace) -> int:
    """`aligngate eval`: gateway.eval (and, for a reward-model judge, torch) is imported only here."""
    from gateway.eval.command import EvalArgs, run_eval

    if args.experiment is not None and args.from_store is None:
        return _fail("eval: --experiment needs --from-store")
    return run_eval(EvalArgs(args.config, args.out, args.from_store, args.experiment, tuple(args.overrides)))


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    # `train METHOD --config R key=value ...` (and `eval`): overrides may follow the flags, which argparse leaves
    # unparsed.
    args, extra = parser.parse_known_args(argv)
    if extra:
        if args.command not in ("train", "eval") or any(e.startswith("-") for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    if args.command == "serve":
        return _serve(args)
    if args.command == "ab":
        return _ab_report(args)
    if args.command == "data":
        return _data_export(args)
    if args.command == "train":
        return _train(args)
    if args.command == "eval":
        return _eval(args)
    raise AssertionError(args.command)
