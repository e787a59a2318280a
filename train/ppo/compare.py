"""Held-out comparison of PPO checkpoints with the base policy, decoded greedily.

``python -m train.ppo.compare RECIPE.yaml [key=value ...] --checkpoints DIR/checkpoint-20 DIR/checkpoint-30
--out DIR``: the recipe's held-out prompts (all of them, not only ``eval_prompts``) answered greedily by the base
(the adapter at zero, i.e. the reference) and by each checkpoint's policy, scored by the recipe's reward model.
Greedy decoding makes each policy's answers deterministic, so the comparison is not sampling luck. Every answer
is scored as a finished chat turn (the reward model's chat template, end-of-turn included), ended or cut off —
the score ``aligngate eval``'s reward-model judge and ``python -m train.evaluate win-rate`` give the same text —
and the paired comparison is on that score; PPO's own reward (a cut answer scored as it stands less
``missing_eos_penalty``) and the share of answers that ended (EOS within ``max_new_tokens``) are reported beside
it. Writes ``OUT/NAME.jsonl`` per policy (``{prompt, response, score, reward, ended}``, the input of ``python -m
train.evaluate win-rate``) and ``OUT/compare.json``; prints, per checkpoint, the means and the paired difference
from the base with its standard error and the share of prompts where the checkpoint's answer scores higher (ties
½).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from core.recipe import load_recipe
from train.ppo.config import PPOConfig

log = logging.getLogger(__name__)

BASE = "base"


@dataclass(frozen=True)
class PolicyResult:
    """One policy's greedy answers to the held-out prompts, compared with the base's on the same prompts."""

    name: str
    prompts: int
    #: Mean of PPO's reward (a cut answer's score less ``missing_eos_penalty``).
    reward_mean: float
    kl: float
    #: Mean of (this policy's finished-turn score - the base's) per prompt, and its standard error.
    diff_from_base: float
    diff_stderr: float
    #: Share of prompts where this policy's answer scores above the base's as a finished turn (ties count ½).
    win_rate_vs_base: float
    #: Mean finished-turn score (every answer scored as a finished chat turn, no penalty).
    score_mean: float
    #: Share of answers that ended (EOS within ``max_new_tokens``).
    eos_rate: float


def paired(scores: Sequence[float], base: Sequence[float]) -> tuple[float, float, float]:
    """(mean difference, its standard error, win rate with ties ½) of ``scores`` over ``base``, prompt by prompt."""
    if len(scores) != len(base) or not scores:
        raise ValueError("need two non-empty score lists of the same length")
    diffs = [a - b for a, b in zip(scores, base, strict=True)]
    n = len(diffs)
    mean = math.fsum(diffs) / n
    stderr = math.sqrt(math.fsum((d - mean) ** 2 for d in diffs) / (n - 1) / n) if n > 1 else 0.0
    wins = sum(1.0 if d > 0 else 0.5 if d == 0 else 0.0 for d in diffs)
    return mean, stderr, wins / n


def _scores(path: Path) -> list[float]:
    return [json.loads(line)["score"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def compare(recipe: PPOConfig, checkpoints: Sequence[Path], out: Path) -> list[PolicyResult]:
    """Greedy held-out answers of the base and of each checkpoint (see the module docstring)."""
    from train.ppo import run as ppo_run

    if not recipe.use_lora:
        raise ValueError("compare needs a LoRA recipe: the base is the policy with its adapter at zero")
    out.mkdir(parents=True, exist_ok=True)
    trainer, tokenizer, _ = ppo_run.build_trainer(recipe)
    # Every held-out prompt, not only the recipe's ``eval_prompts`` (the split itself is the recipe's).
    _, held_out, messages = ppo_run.render_prompts(replace(recipe, eval_prompts=sys.maxsize), tokenizer)
    if not held_out:
        raise ValueError("the recipe holds out no prompts (eval_share is 0)")
    evaluated: list[tuple[str, dict[str, float]]] = []
    for name, path in [(BASE, None), *((p.name, p) for p in checkpoints)]:
        if path is not None:
            ppo_run.load_checkpoint(trainer, path, random.Random(0))
        stats = ppo_run.evaluate(trainer, held_out, recipe.batch_size, out / f"{name}.jsonl", messages, greedy=True)
        log.info("%s: %s", name, stats)
        evaluated.append((name, stats))
    scores = {name: _scores(out / f"{name}.jsonl") for name, _ in evaluated}
    results: list[PolicyResult] = []
    for name, stats in evaluated:
        diff, stderr, win = paired(scores[name], scores[BASE])
        results.append(
            PolicyResult(
                name=name,
                prompts=len(held_out),
                reward_mean=stats["eval_reward_mean"],
                kl=stats["eval_kl"],
                diff_from_base=diff,
                diff_stderr=stderr,
                win_rate_vs_base=win,
                score_mean=stats["eval_score_mean"],
                eos_rate=stats["eval_eos_rate"],
            )
        )
    (out / "compare.json").write_text(json.dumps([asdict(r) for r in results], indent=1), encoding="utf-8")
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.ppo.compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("recipe", help="the PPO recipe of the run (YAML; its recipe.json works too)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, as for `aligngate train ppo`")
    parser.add_argument("--checkpoints", nargs="+", type=Path, required=True, help="checkpoint-N directories")
    parser.add_argument("--out", type=Path, required=True, help="directory for the answers and compare.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for path in args.checkpoints:
        if not (path / "state.json").is_file():
            parser.error(f"{path} is not a PPO checkpoint (no state.json)")
    results = compare(load_recipe(PPOConfig, args.recipe, args.overrides), args.checkpoints, args.out)
    print(
        f"{'policy':<16} {'prompts':>7} {'score':>8} {'reward':>8} {'EOS':>5} {'KL':>6} "
        f"{'Δ score vs base (± s.e.)':>25} {'win vs base':>11}"
    )
    for r in results:
        delta = f"{r.diff_from_base:+.3f} ± {r.diff_stderr:.3f}"
        print(
            f"{r.name:<16} {r.prompts:>7} {r.score_mean:>8.3f} {r.reward_mean:>8.3f} {r.eos_rate:>5.2f} {r.kl:>6.2f} "
            f"{delta:>25} {r.win_rate_vs_base:>11.3f}"
        )
    print(json.dumps({r.name: asdict(r) for r in results}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
