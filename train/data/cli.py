"""Command line for building training sets (``python -m train.data build``) and teacher pairs (``... teacher``).

``build --kind K --input FILE [--input-kind KIND] --out FILE.jsonl``:

* ``aligner``: preference pairs (``hh-rlhf``, ``preferences``, ``bpo`` with good/bad responses) or an
  ``aligner`` export → Aligner SFT rows in ``--template`` (``aligner-v1`` default, ``aligner-v2``,
  ``aligner-chat``; ``raw`` writes the ``{question, answer, correction}`` triplets), with ``--copy-share``
  identity pairs (0.2 default) in the training side only;
* ``rewriter``: ``bpo`` rows or a ``rewriter`` export → rewriter SFT rows in ``--template`` (``bpo`` default,
  ``bpo-chat``, ``raw``); ``--ratio-filter`` applies BPO's word-ratio filter;
* ``kto``: preference pairs → unpaired rows (chosen ``label: true``, rejected ``false``);
* ``sft``: preference pairs (prompt → chosen), ``messages``/``prompt-completion`` rows, or ``dolly`` rows →
  prompt-completion rows;
* ``dpo``: preference pairs → conversational preference rows (for DPO/IPO and reward modelling).

``--eval-share S --eval-out FILE`` holds out a deterministic share of the *input* rows (by prompt; see
``train_eval_split``) before building, so nothing built from one prompt lands on both sides.

``teacher --input FILE --base-url URL --model M --out FILE.jsonl``: BPO-style construction of
``{prompt, optimized_prompt}`` pairs by a teacher LLM (see :mod:`train.data.teacher`); the API key is read from
the environment variable named by ``--api-key-env`` (``OPENAI_API_KEY`` by default), if set.

Both print a one-line JSON summary on stdout; errors go to stderr with exit status 2.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any, cast

from train.data.builders import (
    add_identity_pairs,
    aligner_sft,
    aligner_triplets,
    preference_to_kto,
    preferences_from_bpo,
    rewriter_pairs,
    rewriter_sft,
    sft_from_dolly,
    sft_from_preferences,
    train_eval_split,
)
from train.data.formats import (
    AlignerTriplet,
    BPORow,
    DataFormatError,
    DollyRow,
    PreferenceRecord,
    PromptCompletionRecord,
    write_jsonl,
)
from train.data.loaders import KINDS, Loaded, load_any
from train.data.teacher import construct_bpo_pairs
from train.data.templates import ALIGNER_TEMPLATES, REWRITER_TEMPLATES

__all__ = ["build_parser", "main"]

BUILD_KINDS = ("aligner", "rewriter", "kto", "sft", "dpo")
_PREFERENCE_KINDS = ("hh-rlhf", "preferences", "bpo")


class CLIError(Exception):
    """A usage problem reported as ``error: ...`` with exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m train.data`` argument parser."""
    parser = argparse.ArgumentParser(prog="python -m train.data", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    b = sub.add_parser("build", help="build a training set (JSONL) from a data file")
    b.add_argument("--kind", required=True, choices=BUILD_KINDS, help="what to build")
    b.add_argument("--input", required=True, help="input file (.jsonl or .json array)")
    b.add_argument("--input-kind", choices=KINDS, help="input format (default: sniffed from the first row)")
    b.add_argument("--out", required=True, help="output JSONL (the training side)")
    b.add_argument("--copy-share", type=float, default=0.2, help="aligner: share of identity pairs (default 0.2)")
    b.add_argument(
        "--template",
        help="aligner: aligner-v1 (default), aligner-v2, aligner-chat, raw; rewriter: bpo (default), bpo-chat, raw",
    )
    b.add_argument("--ratio-filter", action="store_true", help="rewriter: apply BPO's word-ratio filter")
    b.add_argument("--seed", type=int, default=0, help="seed for the identity pairs and the split (default 0)")
    b.add_argument("--eval-share", type=float, default=0.0, help="share of input rows held out (default 0)")
    b.add_argument("--eval-out", help="output JSONL for the held-out side (required with --eval-share > 0)")

    t = sub.add_parser("teacher", help="construct rewriter pairs with a teacher LLM (BPO-style)")
    t.add_argument("--input", required=True, help="BPO rows with good_res/bad_res, or preference pairs")
    t.add_argument("--input-kind", choices=_PREFERENCE_KINDS, help="input format (default: sniffed)")
    t.add_argument("--base-url", required=True, help="OpenAI-compatible base URL, e.g. http://host:8000/v1")
    t.add_argument("--model", required=True, help="teacher model name")
    t.add_argument("--out", required=True, help="output JSONL of {prompt, optimized_prompt}")
    t.add_argument("--api-key-env", default="OPENAI_API_KEY", help="environment variable holding the API key")
    t.add_argument("--concurrency", type=int, default=4)
    t.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    t.add_argument("--temperature", type=float, default=0.7)
    t.add_argument("--max-tokens", type=int, default=1024)
    t.add_argument("--limit", type=int, help="only the first N rows")
    return parser


def _preferences(loaded: Loaded[Any]) -> list[PreferenceRecord]:
    if loaded.kind in ("hh-rlhf", "preferences"):
        return cast(list[PreferenceRecord], loaded.rows)
    if loaded.kind == "bpo":
        return preferences_from_bpo(cast(list[BPORow], loaded.rows))
    raise CLIError(f"{loaded.path}: expected preference pairs ({', '.join(_PREFERENCE_KINDS)}), got {loaded.kind}")


def _template(name: str | None, known: Mapping[str, object], default: str) -> str:
    name = name or default
    if name != "raw" and name not in known:
        raise CLIError(f"unknown template {name!r}; expected one of {', '.join([*known, 'raw'])}")
    return name


def _build(args: argparse.Namespace) -> dict[str, Any]:
    if args.eval_share > 0 and not args.eval_out:
        raise CLIError("--eval-share needs --eval-out")
    if args.eval_out and args.eval_share <= 0:
        raise CLIError("--eval-out needs --eval-share > 0")
    loaded = load_any(args.input, args.input_kind)
    kind: str = args.kind
    seed: int = args.seed
    train_rows: list[Any]
    eval_rows: list[Any]

    if kind == "aligner":
        template = _template(args.template, ALIGNER_TEMPLATES, "aligner-v1")
        if loaded.kind == "aligner":
            base = cast(list[AlignerTriplet], loaded.rows)
        else:
            base = aligner_triplets(_preferences(loaded), copy_share=0.0, shuffle=False)
        train_t, eval_t = train_eval_split(base, args.eval_share, seed)
        train_t = add_identity_pairs(train_t, copy_share=args.copy_share, seed=seed)
        if template == "raw":
            train_rows, eval_rows = list(train_t), list(eval_t)
        else:
            train_rows, eval_rows = aligner_sft(train_t, template), aligner_sft(eval_t, template)
    elif kind == "rewriter":
        template = _template(args.template, REWRITER_TEMPLATES, "bpo")
        if loaded.kind in ("bpo", "rewriter"):
            pairs = rewriter_pairs(cast(list[BPORow], loaded.rows), ratio_filter=args.ratio_filter)
        else:
            raise CLIError(f"{loaded.path}: expected bpo rows or a rewriter export, got {loaded.kind}")
        train_p, eval_p = train_eval_split(pairs, args.eval_share, seed)
        if template == "raw":
            train_rows, eval_rows = list(train_p), list(eval_p)
        else:
            train_rows, eval_rows = rewriter_sft(train_p, template), rewriter_sft(eval_p, template)
    elif kind == "sft":
        if args.template:
            raise CLIError("--template applies to --kind aligner and rewriter only")
        if loaded.kind in ("messages", "prompt-completion"):
            records = cast(list[PromptCompletionRecord], loaded.rows)
            train_rows, eval_rows = train_eval_split(records, args.eval_share, seed)
        elif loaded.kind == "dolly":
            train_d, eval_d = train_eval_split(cast(list[DollyRow], loaded.rows), args.eval_share, seed)
            train_rows, eval_rows = sft_from_dolly(train_d), sft_from_dolly(eval_d)
        else:
            train_f, eval_f = train_eval_split(_preferences(loaded), args.eval_share, seed)
            train_rows, eval_rows = sft_from_preferences(train_f), sft_from_preferences(eval_f)
    else:  # kto, dpo
        if args.template:
            raise CLIError("--template applies to --kind aligner and rewriter only")
        train_f, eval_f = train_eval_split(_preferences(loaded), args.eval_share, seed)
        if kind == "kto":
            train_rows, eval_rows = preference_to_kto(train_f), preference_to_kto(eval_f)
        else:
            train_rows, eval_rows = list(train_f), list(eval_f)

    summary: dict[str, Any] = {
        "command": "build",
        "kind": kind,
        "input": str(loaded.path),
        "input_kind": loaded.kind,
        "read": loaded.read,
        "loaded": len(loaded),
        "skipped": dict(loaded.skipped),
        "out": args.out,
        "rows": write_jsonl(args.out, train_rows),
    }
    if args.eval_out:
        summary["eval_out"] = args.eval_out
        summary["eval_rows"] = write_jsonl(args.eval_out, eval_rows)
    return summary


def _teacher(args: argparse.Namespace) -> dict[str, Any]:
    loaded = load_any(args.input, args.input_kind)
    if loaded.kind not in _PREFERENCE_KINDS:
        raise CLIError(f"{loaded.path}: expected BPO rows or preference pairs, got {loaded.kind}")
    rows: list[Mapping[str, object]] = list(loaded.rows)
    if loaded.kind == "bpo":
        rows = [r for r in rows if "good_res" in r and "bad_res" in r]
    if args.limit is not None:
        rows = rows[: args.limit]
    api_key = os.environ.get(args.api_key_env) or None
    pairs, stats = asyncio.run(
        construct_bpo_pairs(
            rows,
            base_url=args.base_url,
            model=args.model,
            api_key=api_key,
            concurrency=args.concurrency,
            timeout_s=args.timeout,
            temperature=args.temperature,
            max_tokens=args.max_tokens,
        )
    )
    written = write_jsonl(args.out, pairs)
    return {"command": "teacher", "input": str(loaded.path), "out": args.out, "rows": written, **stats.as_dict()}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        summary = _build(args) if args.command == "build" else _teacher(args)
    except (CLIError, DataFormatError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary, ensure_ascii=False))
    return 0
