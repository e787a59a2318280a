"""Offline evaluation under a reward model: a reward model's pairwise accuracy on preference pairs, and the win
rate of one set of responses over another, each with a 95% Wilson interval.

``python -m train.evaluate rm-accuracy --reward-model PATH --data FILE [...]`` and
``python -m train.evaluate win-rate --reward-model PATH --a FILE_A --b FILE_B [...]`` print a short summary and
then one JSON line with the numbers; exit status 2 and a message on stderr for bad input (a missing file, rows of
the wrong shape, response files whose prompts differ). :func:`rm_accuracy` and :func:`win_rate` are the same as a
Python API. Scoring is :func:`models.reward.completion_scores` (through :func:`train.rm.pair_scores` for pairs),
the code the RM trainer reports its held-out accuracy with and ``aligngate eval``'s reward-model judge scores with.

Heavy imports (torch, transformers, peft) happen inside functions.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from core.recipe import RecipeError
from core.stats import wilson_interval
from train.config import DatasetSpec
from train.data.builders import train_eval_split
from train.rows import dataset_path

#: Keys a response row may carry its response under, in the order they are looked for.
RESPONSE_KEYS = ("response", "completion", "output")
SPLITS = ("eval", "all")
PREFERENCE_KINDS = ("hh-rlhf", "preferences", "bpo")
DTYPES = ("auto", "bf16", "fp32")
DEVICES = ("auto", "cpu", "cuda")


class EvalError(ValueError):
    """Bad evaluation input (a missing file, a malformed row, response sets that do not match); says which."""


# ---------------------------------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True)
class RMAccuracy:
    """Pairwise accuracy of a reward model: the share of pairs whose chosen answer scores above the rejected."""

    accuracy: float
    #: Pairs scored (after the split, ``limit`` and dropping pairs too long to cut).
    n: int
    #: 95% Wilson interval of ``accuracy``.
    low: float
    high: float
    #: Mean of (chosen score - rejected score).
    mean_margin: float
    #: Answers cut to fit ``max_length``, and pairs dropped as they could not be (:func:`train.rm.truncate_pairs`).
    truncated: int
    dropped: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class WinRate:
    """Win rate of response set A over set B under a reward model; a tie counts ½."""

    win_rate: float
    n: int
    wins: int
    ties: int
    losses: int
    #: 95% Wilson interval of ``win_rate``.
    low: float
    high: float
    mean_score_a: float
    mean_score_b: float
    #: Responses longer than ``max_length`` tokens (with their prompt), scored on their first ``max_length`` tokens.
    truncated: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------------------------------------------------
# Reward-model accuracy


def preference_pairs(
    data: str, kind: str | None = None, split: str = "eval", eval_share: float = 0.1, seed: int = 0
) -> list[Any]:
    """Preference rows of ``data`` (a file or ``bundled:REL``): with ``split="eval"`` only the rows the RM trainer
    holds out for the same ``eval_share`` and ``seed`` (the split hashes each row's prompt, so these rows were
    never trained on, whatever else the training set held); ``split="all"`` keeps every row."""
    from train.rows import preference_rows

    if split not in SPLITS:
        raise EvalError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    if not 0.0 < eval_share <= 1.0:
        raise EvalError(f"eval share must be within (0, 1], got {eval_share}")
    spec = DatasetSpec(path=data, kind=kind)
    path = dataset_path(spec, Path(data))
    if not path.is_file():
        raise EvalError(f"data file {path} does not exist")
    rows = preference_rows(spec)
    if split == "eval":
        rows = train_eval_split(rows, eval_share, seed=seed)[1]
    return rows


def accuracy_of(scores: Sequence[tuple[float, float]], truncated: int = 0, dropped: int = 0) -> RMAccuracy:
    """:class:`RMAccuracy` of ``(chosen score, rejected score)`` pairs (a tie is not a win, as in training)."""
    if not scores:
        raise EvalError("no preference pairs to evaluate")
    n = len(scores)
    wins = sum(chosen > rejected for chosen, rejected in scores)
    low, high = wilson_interval(wins, n)
    margin = math.fsum(chosen - rejected for chosen, rejected in scores) / n
    return RMAccuracy(wins / n, n, low, high, margin, truncated, dropped)


def rm_accuracy(
    reward_model: str | Path,
    data: str,
    *,
    kind: str | None = None,
    max_length: int = 512,
    batch_size: int = 8,
    limit: int | None = None,
    split: str = "eval",
    eval_share: float = 0.1,
    seed: int = 0,
    dtype: str = "auto",
    device: str = "auto",
) -> RMAccuracy:
    """Pairwise accuracy of ``reward_model`` (``aligngate train rm`` output, an HF directory or ``builtin:NAME``)
    on the preference pairs of ``data`` (see :func:`preference_pairs`); at most ``limit`` pairs. Answers too long
    for ``max_length`` tokens are cut as the trainer cuts them (:func:`train.rm.truncate_pairs`)."""
    from train.rm import pair_scores, truncate_pairs

    _check_sizes(max_length, batch_size, limit)
    rows = preference_pairs(data, kind, split, eval_share, seed)
    if limit is not None:
        rows = rows[:limit]
    if not rows:
        raise EvalError(f"no preference pairs to evaluate in {data} (split {split})")
    model, tokenizer = _load(reward_model, dtype, device)
    rows, truncated, dropped = truncate_pairs(rows, tokenizer, max_length)
    return accuracy_of(pair_scores(model, tokenizer, rows, max_length, batch_size), truncated, dropped)


# ---------------------------------------------------------------------------------------------------------------
# Win rate


@dataclass(frozen=True)
class Response:
    """One row of a response file: the prompt as chat messages, the response text and its place in the file."""

    prompt: list[dict[str, str]]
    response: str
    line: int

    @property
    def key(self) -> str:
        return json.dumps(self.prompt, sort_keys=True, ensure_ascii=False)


def _messages(prompt: object, where: str) -> list[dict[str, str]]:
    if isinstance(prompt, str):
        if not prompt.strip():
            raise EvalError(f"{where}: 'prompt' is empty")
        return [{"role": "user", "content": prompt}]
    if not isinstance(prompt, list) or not prompt:
        raise EvalError(f"{where}: 'prompt' must be a string or a non-empty list of chat messages")
    out: list[dict[str, str]] = []
    for i, message in enumerate(prompt):
        if (
            not isinstance(message, dict)
            or not isinstance(message.get("role"), str)
            or not isinstance(message.get("content"), str)
        ):
            raise EvalError(f"{where}: prompt message {i} must be an object with string 'role' and 'content'")
        out.append({"role": message["role"], "content": message["content"]})
    return out


def _response_text(row: dict[str, Any], where: str) -> str:
    for key in RESPONSE_KEYS:
        if key in row:
            value = row[key]
            # a TRL conversational completion: [{"role": "assistant", "content": ...}]
            if isinstance(value, list) and value and isinstance(value[-1], dict):
                value = value[-1].get("content")
            if not isinstance(value, str):
                raise EvalError(f"{where}: {key!r} must be a string (or a list of chat messages)")
            return value
    raise EvalError(f"{where}: no response (expected one of the keys {', '.join(RESPONSE_KEYS)})")


def read_responses(path: str | Path) -> list[Response]:
    """The rows of a JSONL response file ``{prompt, response}`` (``completion`` or ``output`` also name the
    response; a prompt is a string or a list of chat messages). Blank lines are skipped."""
    path = Path(path)
    if not path.is_file():
        raise EvalError(f"response file {path} does not exist")
    out: list[Response] = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise EvalError(f"{where}: not valid JSON ({exc.msg})") from exc
            if not isinstance(row, dict) or "prompt" not in row:
                raise EvalError(f"{where}: expected an object with a 'prompt'")
            out.append(Response(_messages(row["prompt"], where), _response_text(row, where), number))
    if not out:
        raise EvalError(f"response file {path} has no rows")
    return out


def match_responses(a: Sequence[Response], b: Sequence[Response]) -> list[tuple[Response, Response]]:
    """Pairs ``(a, b)`` answering the same prompt, in A's order. A prompt may appear several times (several
    samples): its k-th response in A meets its k-th in B. The two files must hold the same prompts, as often."""
    count_a = Counter(r.key for r in a)
    count_b = Counter(r.key for r in b)
    if count_a != count_b:
        only_a = sum((count_a - count_b).values())
        only_b = sum((count_b - count_a).values())
        example = next(r for r in (*a, *b) if count_a[r.key] != count_b[r.key])
        raise EvalError(
            f"the two response files do not answer the same prompts: {only_a} row(s) of A and {only_b} row(s) of "
            f"B have no counterpart, e.g. prompt {_short(example.prompt[-1]['content'])!r}"
        )
    queues: dict[str, list[Response]] = {}
    for response in b:
        queues.setdefault(response.key, []).append(response)
    for queue in queues.values():
        queue.reverse()
    return [(response, queues[response.key].pop()) for response in a]


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def win_rate_of(scores: Sequence[tuple[float, float]], truncated: int = 0) -> WinRate:
    """:class:`WinRate` of ``(score of A, score of B)`` per prompt; a tie counts ½."""
    if not scores:
        raise EvalError("no responses to compare")
    n = len(scores)
    wins = sum(a > b for a, b in scores)
    ties = sum(a == b for a, b in scores)
    points = wins + ties / 2
    low, high = wilson_interval(points, n)
    mean_a = math.fsum(a for a, _ in scores) / n
    mean_b = math.fsum(b for _, b in scores) / n
    return WinRate(points / n, n, wins, ties, n - wins - ties, low, high, mean_a, mean_b, truncated)


def win_rate(
    reward_model: str | Path,
    a: str | Path,
    b: str | Path,
    *,
    max_length: int = 512,
    batch_size: int = 8,
    dtype: str = "auto",
    device: str = "auto",
) -> WinRate:
    """Win rate of the responses in file ``a`` over those in file ``b`` (same prompts) under ``reward_model``.

    Each (prompt, response) is rendered with the reward model's chat template (the prompt's messages, then an
    assistant message with the response) and scored once; identical pairs get identical scores, so a set against
    itself is exactly ½ and swapping A and B gives exactly 1 - the rate.
    """
    from models.reward import completion_scores

    _check_sizes(max_length, batch_size, None)
    pairs = match_responses(read_responses(a), read_responses(b))
    model, tokenizer = _load(reward_model, dtype, device)
    # Score each distinct (prompt, response) once, in an order independent of which file it came from.
    unique = sorted({(r.key, r.response): r for pair in pairs for r in pair}.items())
    items = [_scoring_item(tokenizer, r) for _, r in unique]
    truncated = sum(_length(tokenizer, prompt, completion) > max_length for prompt, completion in items)
    values = completion_scores(model, tokenizer, items, max_length, batch_size)
    scored = dict(zip([key for key, _ in unique], values, strict=True))
    scores = [(scored[(x.key, x.response)], scored[(y.key, y.response)]) for x, y in pairs]
    return win_rate_of(scores, truncated)


def _scoring_item(tokenizer: Any, response: Response) -> tuple[Any, Any]:
    """``(prompt, completion)`` for :func:`models.reward.completion_scores` (:func:`models.reward.scoring_item`)."""
    from models.reward import RewardModelError, scoring_item

    try:
        return scoring_item(tokenizer, response.prompt, response.response)
    except RewardModelError as exc:
        raise EvalError(str(exc)) from None


def _length(tokenizer: Any, prompt: Any, completion: Any) -> int:
    from models.reward import token_length

    return token_length(tokenizer, prompt, completion)


# ---------------------------------------------------------------------------------------------------------------
# Shared


def _check_sizes(max_length: int, batch_size: int, limit: int | None) -> None:
    if max_length < 1 or batch_size < 1:
        raise EvalError("max length and batch size must be positive")
    if limit is not None and limit < 1:
        raise EvalError(f"limit must be positive, got {limit}")


def _load(reward_model: str | Path, dtype: str, device: str) -> tuple[Any, Any]:
    """(model, tokenizer) on ``device`` (``auto``: CUDA when available, else CPU); ``dtype`` ``auto`` is bf16 on
    CUDA and fp32 on CPU."""
    from models.reward import RewardModelError, load_on_device

    if dtype not in DTYPES:
        raise EvalError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if device not in DEVICES:
        raise EvalError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
    source = str(reward_model)
    if not source.startswith("builtin:") and not Path(source).exists():
        raise EvalError(f"reward model {source} does not exist")
    try:
        return load_on_device(source, device, dtype)
    except RewardModelError as exc:
        raise EvalError(str(exc)) from None


# ---------------------------------------------------------------------------------------------------------------
# CLI


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _share(text: str) -> float:
    value = float(text)
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be within (0, 1], got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m train.evaluate",
        description="Evaluate a reward model (pairwise accuracy) or compare two response sets under one (win rate).",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    def common(sub: argparse.ArgumentParser) -> None:
        sub.add_argument(
            "--reward-model",
            required=True,
            help="`aligngate train rm` output (e.g. runs/rm/final), an HF directory, a GGUF file or builtin:NAME",
        )
        sub.add_argument("--max-length", type=_positive, default=512, help="tokens per scored sequence")
        sub.add_argument("--batch-size", type=_positive, default=8)
        sub.add_argument("--dtype", choices=DTYPES, default="auto", help="auto: bf16 on CUDA, fp32 on CPU")
        sub.add_argument("--device", choices=DEVICES, default="auto", help="auto: CUDA when available, else CPU")

    acc = commands.add_parser("rm-accuracy", help="pairwise accuracy on preference pairs, 95%% Wilson interval")
    common(acc)
    acc.add_argument("--data", required=True, help="preference file (JSONL/JSON) or bundled:REL")
    acc.add_argument("--kind", choices=PREFERENCE_KINDS, default=None, help="data kind (default: sniffed)")
    acc.add_argument("--limit", type=_positive, default=None, help="score at most N pairs")
    acc.add_argument(
        "--split", choices=SPLITS, default="eval", help="eval: only the pairs the RM trainer held out; all: every pair"
    )
    acc.add_argument("--eval-share", type=_share, default=0.1, help="the recipe's eval_share (rm.yaml: 0.1)")
    acc.add_argument("--seed", type=int, default=0, help="the recipe's seed")

    win = commands.add_parser("win-rate", help="win rate of responses A over B under a reward model")
    common(win)
    win.add_argument("--a", required=True, help="JSONL of {prompt, response} (A)")
    win.add_argument("--b", required=True, help="JSONL of {prompt, response} to the same prompts (B)")
    return parser


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def summary(result: RMAccuracy | WinRate) -> str:
    """The human-readable lines printed before the JSON line."""
    if isinstance(result, RMAccuracy):
        return (
            f"pairwise accuracy: {_pct(result.accuracy)} of {result.n} pairs "
            f"(95% CI {_pct(result.low)} to {_pct(result.high)})\n"
            f"mean margin (chosen - rejected): {result.mean_margin:+.4f}\n"
            f"answers cut to fit: {result.truncated}; pairs dropped: {result.dropped}"
        )
    return (
        f"win rate of A over B: {_pct(result.win_rate)} of {result.n} prompts "
        f"(95% CI {_pct(result.low)} to {_pct(result.high)}; ties count 1/2)\n"
        f"wins {result.wins}, ties {result.ties}, losses {result.losses}\n"
        f"mean score: A {result.mean_score_a:+.4f}, B {result.mean_score_b:+.4f}\n"
        f"responses over max length (scored on their start): {result.truncated}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 done, 2 bad input)."""
    from models.engine import EngineError  # ModelSourceError: a reward model path that is no model
    from train.data.formats import DataFormatError

    args = build_parser().parse_args(argv)
    try:
        result: RMAccuracy | WinRate
        if args.command == "rm-accuracy":
            result = rm_accuracy(
                args.reward_model,
                args.data,
                kind=args.kind,
                max_length=args.max_length,
                batch_size=args.batch_size,
                limit=args.limit,
                split=args.split,
                eval_share=args.eval_share,
                seed=args.seed,
                dtype=args.dtype,
                device=args.device,
            )
        else:
            result = win_rate(
                args.reward_model,
                args.a,
                args.b,
                max_length=args.max_length,
                batch_size=args.batch_size,
                dtype=args.dtype,
                device=args.device,
            )
    except (EvalError, RecipeError, DataFormatError, EngineError, OSError) as exc:
        print(f"python -m train.evaluate {args.command}: error: {exc}", file=sys.stderr)
        return 2
    print(summary(result))
    print(json.dumps({"command": args.command, **result.as_dict()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
