"""Where does the PPO recipe's policy end its answers? Generation only (no training, no reward model).

The policy of ``train/recipes/ppo.yaml`` (the built-in SmolLM2-135M-Instruct) answers ``--prompts`` prompts of
the recipe's dataset with up to ``--max-new-tokens`` tokens, as PPO generates them: greedily on held-out prompts
(as ``eval_greedy`` and ``python -m train.ppo.compare`` decode), and sampled at temperature 1 on training prompts
(as the rollouts are; seed 0). For each answer it records the token at which it wrote EOS (its end of turn), if
it did, and prints the EOS rate — the share of answers that ended — each ``max_new_tokens`` would give: what
``missing_eos_penalty`` acts on.

    python benchmarks/ppo_eos_lengths.py [--prompts 32] [--max-new-tokens 256] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

CAPS = (32, 48, 64, 96, 128, 160, 192, 256)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/train/ppo_eos_lengths.json"))
    args = parser.parse_args()

    import torch

    from core.recipe import load_recipe
    from train.modeling import load_causal_lm
    from train.ppo.config import PPOConfig
    from train.ppo.run import render_prompts

    torch.set_num_threads(args.threads)
    recipe = load_recipe(PPOConfig, "train/recipes/ppo.yaml", [])
    model, tokenizer, _ = load_causal_lm(recipe)
    model.eval()
    train, held_out, _ = render_prompts(recipe, tokenizer)
    n, cap = args.prompts, args.max_new_tokens
    result: dict[str, Any] = {"model": recipe.model, "prompts": n, "max_new_tokens": cap}
    for mode, prompts in (("greedy_held_out", held_out[:n]), ("sampled_train", train[:n])):
        torch.manual_seed(0)
        sampling: dict[str, Any] = (
            {"do_sample": False}
            if mode.startswith("greedy")
            else {"do_sample": True, "temperature": 1.0, "top_k": 0, "top_p": 1.0}
        )
        lengths: list[int | None] = []
        started = time.perf_counter()
        for start in range(0, len(prompts), args.batch_size):
            enc = tokenizer(
                prompts[start : start + args.batch_size], return_tensors="pt", padding=True, padding_side="left"
            )
            with torch.no_grad():
                generated = model.generate(
                    **enc,
                    **sampling,
                    max_new_tokens=cap,
                    min_new_tokens=1,
                    pad_token_id=tokenizer.pad_token_id,
                    eos_token_id=tokenizer.eos_token_id,
                )
            for row in generated[:, enc["input_ids"].shape[1] :].tolist():
                lengths.append(row.index(tokenizer.eos_token_id) + 1 if tokenizer.eos_token_id in row else None)
        rates = {c: sum(1 for x in lengths if x is not None and x <= c) / len(lengths) for c in CAPS if c <= cap}
        result[mode] = {"eos_at": lengths, "eos_rate": rates, "seconds": round(time.perf_counter() - started, 1)}
        print(f"{mode:<16} EOS rate by max_new_tokens: " + ", ".join(f"{c}: {r:.0%}" for c, r in rates.items()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(json.dumps({k: v["eos_rate"] for k, v in result.items() if isinstance(v, dict)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
