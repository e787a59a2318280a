"""Training throughput per method on the built-in SmolLM2-135M: tokens per second, CPU (or the GPU when present).

Each method runs its own recipe from ``train/recipes/`` through ``aligngate train METHOD`` in a fresh process,
for a few optimizer steps with ``logging_steps=1``, no evaluation and no checkpoint. The first step is warm-up
(model load, data preparation, first allocations) and is left out.

- TRL methods (sft, rm, dpo, kto): the trainers log ``num_tokens`` (the attention-mask tokens of the training
  batches: prompt + completion, both answers of a pair for rm/dpo) at every step; TensorBoard stores each with
  its wall time. tokens/s = Δ num_tokens / Δ wall time from the end of step 1 to the end of the last step.
- PPO (our trainer): each step's rollout tokens (prompt + response) over the step's wall time (generation,
  scoring, reference and value passes and ``ppo_epochs`` of updates included); its reward model is the
  base model with an untrained head (throughput does not depend on the RM's quality).

Prints a table, writes ``benchmarks/results/train_throughput.md``, and ends with one JSON line.

    python benchmarks/train_throughput.py [--steps 5] [--ppo-steps 3] [--methods sft rm dpo kto ppo]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

#: method -> (CLI method, recipe) ; SFT is measured on the base-model recipe (rewriter/aligner SFT are the same loop).
RECIPES: dict[str, tuple[str, str]] = {
    "sft": ("sft", "train/recipes/base-sft.yaml"),
    "rm": ("rm", "train/recipes/rm.yaml"),
    "dpo": ("dpo", "train/recipes/dpo.yaml"),
    "kto": ("kto", "train/recipes/kto.yaml"),
    "ppo": ("ppo", "train/recipes/ppo.yaml"),
}


@dataclass
class Result:
    method: str
    steps_timed: int
    tokens: int
    seconds: float
    tokens_per_s: float
    seconds_per_step: float
    batch: str


def _device() -> str:
    import torch

    if torch.cuda.is_available():
        return f"cuda ({torch.cuda.get_device_name(0)})"
    return f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"


def _run(method: str, recipe: str, out: Path, overrides: list[str], log: Path) -> None:
    cmd = [sys.executable, "-m", "gateway", "train", method, "--config", recipe, f"output_dir={out}", *overrides]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(ROOT)}
    with log.open("wb") as fh:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT, check=False)
    if proc.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise SystemExit(f"{method} failed (exit {proc.returncode}); log {log}:\n{tail}")


def _tensorboard_tokens(out: Path) -> list[tuple[float, float]]:
    """(wall time, cumulative num_tokens) per logged step, from the TensorBoard events under ``out``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    points: list[tuple[float, float]] = []
    for events in sorted(out.rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events.parent))
        acc.Reload()
        if "train/num_tokens" in acc.Tags().get("scalars", []):
            points += [(e.wall_time, e.value) for e in acc.Scalars("train/num_tokens")]
    return sorted(points)


def measure_trl(method: str, steps: int, workdir: Path) -> Result:
    cli, recipe = RECIPES[method]
    out = workdir / method
    overrides = [f"max_steps={steps}", "logging_steps=1", "eval_share=0", "save_steps=100000",
                 "report_to=[tensorboard]", "disable_tqdm=true"]  # fmt: skip
    _run(cli, recipe, out, overrides, workdir / f"{method}.log")
    points = _tensorboard_tokens(out)
    if len(points) < 2:
        raise SystemExit(f"{method}: fewer than 2 num_tokens points in {out}")
    (t0, n0), (t1, n1) = points[0], points[-1]
    from core.recipe import load_recipe
    from train.run import method_module

    config = load_recipe(method_module(cli).RECIPE, ROOT / recipe)
    batch = f"{config.per_device_train_batch_size}x{config.gradient_accumulation_steps}, max_length {config.max_length}"
    seconds = t1 - t0
    return Result(
        method, len(points) - 1, int(n1 - n0), seconds, (n1 - n0) / seconds, seconds / (len(points) - 1), batch
    )


def measure_ppo(steps: int, workdir: Path) -> Result:
    cli, recipe = RECIPES["ppo"]
    out = workdir / "ppo"
    overrides = [f"max_steps={steps}", "eval_prompts=0", "save_steps=100000", "report_to=[]", "disable_tqdm=true",
                 "reward_model=builtin:smollm2-135m-instruct"]  # fmt: skip
    _run(cli, recipe, out, overrides, workdir / "ppo.log")
    rows = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines() if line.strip()]
    rows = [r for r in rows if "tokens" in r]
    if len(rows) < 2:
        raise SystemExit("ppo: fewer than 2 steps in history.jsonl")
    timed = rows[1:]
    tokens = sum(r["tokens"] for r in timed)
    seconds = rows[-1]["seconds"] - rows[0]["seconds"]
    from core.recipe import load_recipe
    from train.ppo.config import PPOConfig

    config = load_recipe(PPOConfig, ROOT / recipe)
    batch = f"{config.batch_size} rollouts, {config.max_new_tokens} new tokens, {config.ppo_epochs} epochs"
    return Result("ppo", len(timed), int(tokens), seconds, tokens / seconds, seconds / len(timed), batch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=5, help="optimizer steps per TRL method (first is warm-up)")
    parser.add_argument("--ppo-steps", type=int, default=3, help="PPO steps (first is warm-up)")
    parser.add_argument("--methods", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--no-write", action="store_true", help="do not write benchmarks/results/")
    args = parser.parse_args()
    device = _device()
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="train-throughput-") as tmp:
        for method in args.methods:
            started = time.perf_counter()
            result = (
                measure_ppo(args.ppo_steps, Path(tmp))
                if method == "ppo"
                else measure_trl(method, args.steps, Path(tmp))
            )
            results.append(result)
            print(f"{method}: {result.tokens_per_s:.0f} tokens/s ({time.perf_counter() - started:.0f} s)", flush=True)
    lines = [
        "# Training throughput on the built-in SmolLM2-135M",
        "",
        f"Machine: {platform.machine()}, {device}, Python {platform.python_version()}. LoRA r=16 on the attention",
        "projections, fp32 on CPU (bf16 on GPU); each method's own recipe in train/recipes/; first step left out.",
        f"Command: `python benchmarks/train_throughput.py --steps {args.steps} --ppo-steps {args.ppo_steps}`",
        "",
        "| method | batch | steps timed | tokens | seconds | s/step | tokens/s |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r.method} | {r.batch} | {r.steps_timed} | {r.tokens} | {r.seconds:.1f} | {r.seconds_per_step:.1f} "
            f"| {r.tokens_per_s:.0f} |"
        )
    table = "\n".join(lines) + "\n"
    print(table)
    if not args.no_write:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "train_throughput.md").write_text(table, encoding="utf-8")
    summary = {"device": device, "tokens_per_s": {r.method: round(r.tokens_per_s, 1) for r in results}}
    summary["results"] = [asdict(r) for r in results]  # type: ignore[assignment]
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
