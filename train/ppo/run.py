"""``aligngate train ppo --config RECIPE.yaml [key=value ...]``: PPO of a causal LM against a trained reward model.
The recipe is a :class:`train.ppo.config.PPOConfig`, which the :class:`train.ppo.trainer.PPOTrainer` takes as is.

The policy is ``model`` (HF directory, GGUF, ``builtin:``), with a LoRA adapter (its reference is the base with
the adapter disabled) or fully fine-tuned (a frozen copy is the reference). The reward model is what
``aligngate train rm`` wrote (adapter + score head, merged on load) or any sequence classifier; the value model
is a separate copy initialised from it. Prompts are the prompts of ``dataset`` (preference pairs, BPO, Dolly,
prompt-completion or messages files), rendered with the policy's chat template; an ``eval_share`` of them is held
out and scored every ``eval_steps`` (mean reward, finished-turn score, EOS rate and KL of sampled answers). The
reward model scores the prompt's messages and the answer with its own chat template: an answer that ended (EOS
within ``max_new_tokens``) as a finished turn, a cut one as it stands less ``missing_eos_penalty``.

Writes ``output_dir/final`` (adapter or model + tokenizer: the gateway's local engine loads it), ``merged`` with
``merge: true``, checkpoints ``checkpoint-N`` (policy, value model, optimizer, KL controller; ``resume_from_
checkpoint`` continues from them), ``history.jsonl`` (one line of stats per step), TensorBoard events and
``ppo.png`` (reward and KL per step), and the held-out samples of each evaluation, ``samples/step-N.jsonl``
(``python -m train.evaluate win-rate --a samples/step-N.jsonl --b samples/step-0.jsonl`` compares them).
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from core.recipe import RecipeError
from train.modeling import load_causal_lm, torch_dtype
from train.outputs import write_outputs
from train.ppo.config import PPOConfig
from train.rows import sft_splits
from train.run import run_main

log = logging.getLogger(__name__)


def render_prompts(config: PPOConfig, tokenizer: Any) -> tuple[list[str], list[str], dict[str, list[dict[str, str]]]]:
    """(train prompts, held-out prompts) as text ready for generation, over-long ones dropped, and the chat
    messages each text was rendered from."""
    # The SFT split (rows split by prompt, as the RM / DPO / KTO recipes split pairs): the prompts they hold out,
    # and `aligngate eval`'s hh-rlhf-harmless set, are never a PPO training prompt.
    sides = sft_splits(config)
    seen: dict[str, list[dict[str, str]]] = {}
    train: list[str] = []
    held_out: list[str] = []
    for side, texts in zip(sides, (train, held_out), strict=True):
        for row in side:
            prompt = row["prompt"]
            messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else [dict(m) for m in prompt]
            text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            if text in seen or len(tokenizer(text, add_special_tokens=False)["input_ids"]) > config.max_prompt_length:
                continue
            seen[text] = messages
            texts.append(text)
    if not train:
        raise RecipeError(f"no prompts of at most {config.max_prompt_length} tokens in the dataset")
    log.info("prompts: %d train, %d held out (of %d rows)", len(train), len(held_out), len(sides[0]) + len(sides[1]))
    return train, held_out[: config.eval_prompts], seen


class _Logger:
    """history.jsonl, TensorBoard (when asked for and installed) and a log line every ``logging_steps``."""

    def __init__(self, config: PPOConfig, out: Path) -> None:
        self.config = config
        self.path = out / "history.jsonl"
        self.writer: Any = None
        if "tensorboard" in config.report_to:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(out / "runs"))
            except ImportError:  # pragma: no cover - tensorboard is in the train extra
                log.warning("tensorboard is not installed; logging to history.jsonl only")

    def log(self, step: int, stats: dict[str, float]) -> None:
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps({"step": step, **stats}) + "\n")
        if self.writer is not None:
            for key, value in stats.items():
                if isinstance(value, (int, float)) and math.isfinite(value):
                    self.writer.add_scalar(f"ppo/{key}", value, step)
        if step % max(self.config.logging_steps, 1) == 0 or "eval_reward_mean" in stats:
            shown = {k: round(v, 4) for k, v in stats.items() if isinstance(v, float)}
            log.info("step %d: %s", step, shown)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def history(out: Path) -> list[dict[str, float]]:
    """The rows of ``history.jsonl`` (empty when absent)."""
    path = out / "history.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def running_mean(values: list[float], window: int) -> list[float]:
    """Trailing mean over the last ``window`` values (fewer at the start)."""
    out: list[float] = []
    for i in range(len(values)):
        part = values[max(0, i + 1 - window) : i + 1]
        out.append(sum(part) / len(part))
    return out


def plot(out: Path, target_kl: float | None = None, window: int = 5) -> Path | None:
    """``ppo.png``: rollout reward (and its ``window``-step running mean), held-out reward (and, where the history
    has it, the held-out finished-turn score), and sequence KL per step with the controller's ``target_kl`` when
    there is one; None without matplotlib."""
    rows = history(out)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed; no ppo.png")
        return None
    train = [r for r in rows if "reward_mean" in r]
    steps = [r["step"] for r in train]
    rewards = [r["reward_mean"] for r in train]
    fig, (ax_r, ax_kl) = plt.subplots(1, 2, figsize=(10, 4))
    ax_r.plot(steps, rewards, alpha=0.4, label="rollout reward (fresh train prompts)")
    ax_r.plot(steps, running_mean(rewards, window), label=f"rollout reward, {window}-step mean")
    evals = [r for r in rows if "eval_reward_mean" in r]
    if evals:
        ax_r.plot([r["step"] for r in evals], [r["eval_reward_mean"] for r in evals], "o-", label="held-out prompts")
        turns = [r for r in evals if "eval_score_mean" in r]
        if turns:
            ax_r.plot(
                [r["step"] for r in turns],
                [r["eval_score_mean"] for r in turns],
                "s--",
                label="held-out, as finished turns (no penalty)",
            )
    ax_r.set_xlabel("PPO step")
    ax_r.set_ylabel("mean reward-model score")
    ax_r.legend(fontsize="small")
    kls = [r["kl"] for r in train]
    ax_kl.plot(steps, kls, alpha=0.4, label="KL(policy || reference), nats/seq")
    ax_kl.plot(steps, running_mean(kls, window), label=f"KL, {window}-step mean")
    if evals:
        ax_kl.plot([r["step"] for r in evals], [r["eval_kl"] for r in evals], "o-", label="held-out KL")
    if target_kl is not None:
        ax_kl.axhline(target_kl, color="grey", linestyle="--", label="KL target")
    ax_kl.set_xlabel("PPO step")
    ax_kl.legend(fontsize="small")
    fig.tight_layout()
    path = out / "ppo.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def evaluate(
    trainer: Any,
    prompts: list[str],
    batch_size: int,
    samples: Path | None = None,
    messages: Any = None,
    seed: int | None = None,
    greedy: bool = False,
) -> dict[str, float]:
    """Scores, sequence KL and response length of sampled answers to held-out prompts (no update):

    * ``eval_reward_mean``: the reward PPO maximises (the rollouts' ``reward_mean``): the finished-turn score of an
      answer that ended, the score of a cut one as it stands less ``missing_eos_penalty``;
    * ``eval_score_mean``: every answer scored as a finished chat turn, ended or not, with no penalty — the score
      ``aligngate eval``'s reward-model judge and ``python -m train.evaluate win-rate`` give the same text;
    * ``eval_eos_rate``: the share of answers that ended (wrote EOS within ``max_new_tokens``).

    ``greedy`` decodes greedily instead of sampling. With ``seed``, sampling runs on a forked RNG seeded with it
    (the training RNG is left where it was), so every evaluation draws the same random numbers. ``messages`` (the
    chat messages of each prompt text) are what the reward model renders. With ``samples``, also writes the
    answers as JSONL ``{prompt, response, score, reward, ended}`` (``prompt``: the chat messages; ``score``: the
    finished-turn score; ``reward``: PPO's), the input of ``python -m train.evaluate win-rate``."""
    import torch

    if seed is None or greedy:
        return _evaluate(trainer, prompts, batch_size, samples, messages, greedy)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return _evaluate(trainer, prompts, batch_size, samples, messages, greedy)


def _evaluate(
    trainer: Any, prompts: list[str], batch_size: int, samples: Path | None, messages: Any, greedy: bool
) -> dict[str, float]:
    if messages is not None:
        trainer.prompt_messages.update(messages)
    rewards: list[float] = []
    scores: list[float] = []
    ended: list[bool] = []
    kls: list[float] = []
    lengths: list[float] = []
    rows: list[dict[str, Any]] = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        batch = trainer.rollout(chunk, greedy=greedy)
        turn = trainer.turn_scores(batch).tolist()
        for i, text in enumerate(chunk):
            prompt = messages.get(text, text) if messages is not None else text
            row = {"prompt": prompt, "response": batch.answers[i], "score": turn[i]}
            rows.append(row | {"reward": batch.scores[i].item(), "ended": bool(batch.ended[i])})
        rewards += batch.scores.tolist()
        scores += turn
        ended += batch.ended.tolist()
        kls += batch.kl.sum(-1).tolist()
        lengths += batch.response_mask.sum(-1).float().tolist()
    if samples is not None:
        samples.parent.mkdir(parents=True, exist_ok=True)
        samples.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    n = max(len(scores), 1)
    return {
        "eval_reward_mean": sum(rewards) / n,
        "eval_score_mean": sum(scores) / n,
        "eval_eos_rate": sum(ended) / n,
        "eval_kl": sum(kls) / n,
        "eval_response_length": sum(lengths) / n,
    }


def _checkpoints(out: Path) -> list[Path]:
    found = [p for p in out.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()]
    return sorted(found, key=lambda p: int(p.name.split("-")[-1]))


def save_checkpoint(trainer: Any, config: PPOConfig, step: int, pool: list[str], rng: random.Random) -> Path:
    """``checkpoint-STEP``: policy (adapter or model), value model, optimizer, KL coefficient, RNG, prompt pool."""
    import torch

    path = Path(config.output_dir) / f"checkpoint-{step}"
    trainer.policy.save_pretrained(str(path / "policy"))
    trainer.value_model.save_pretrained(str(path / "value"))
    torch.save(trainer.optimizer.state_dict(), path / "optimizer.pt")
    state = {
        "step": step,
        "kl_coef": trainer.kl_ctl.value,
        "minibatch_rng": trainer.rng.getstate(),
        "prompt_rng": rng.getstate(),
        "pool": pool,
    }
    (path / "state.json").write_text(json.dumps(state, default=list), encoding="utf-8")
    torch.save(torch.get_rng_state(), path / "torch_rng.pt")
    if config.save_total_limit:
        for old in _checkpoints(Path(config.output_dir))[: -config.save_total_limit]:
            import shutil

            shutil.rmtree(old, ignore_errors=True)
    return path


def _rng_state(value: list[Any]) -> tuple[Any, ...]:
    version, internal, gauss = value
    return (version, tuple(internal), gauss)


def load_checkpoint(trainer: Any, path: Path, rng: random.Random) -> tuple[int, list[str]]:
    """Restore what :func:`save_checkpoint` wrote into ``trainer`` and ``rng``; returns (step, prompt pool)."""
    import torch
    from safetensors.torch import load_file

    if trainer.use_lora:
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(trainer.policy, load_file(str(path / "policy" / "adapter_model.safetensors")))
    else:
        trainer.policy.load_state_dict(load_file(str(path / "policy" / "model.safetensors")), strict=False)
    trainer.value_model.load_state_dict(load_file(str(path / "value" / "model.safetensors")), strict=False)
    trainer.optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    state = json.loads((path / "state.json").read_text(encoding="utf-8"))
    trainer.kl_ctl.value = float(state["kl_coef"])
    trainer.rng.setstate(_rng_state(state["minibatch_rng"]))
    rng.setstate(_rng_state(state["prompt_rng"]))
    torch.set_rng_state(torch.load(path / "torch_rng.pt", weights_only=True))
    return int(state["step"]), list(state["pool"])


def _resume_path(config: PPOConfig) -> Path | None:
    value = config.resume_from_checkpoint
    if value is True:
        found = _checkpoints(Path(config.output_dir))
        if not found:
            log.warning("resume_from_checkpoint: no checkpoint in %s yet; starting fresh", config.output_dir)
            return None
        return found[-1]
    if isinstance(value, str) and value:
        return Path(value)
    return None


def build_trainer(config: PPOConfig) -> tuple[Any, Any, Path]:
    """(PPOTrainer, tokenizer, base directory) with every model on the training device."""
    import torch

    from train.ppo.trainer import PPOTrainer
    from train.rm import load_trained_reward_model

    dtype = torch_dtype(config)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    policy, tokenizer, base = load_causal_lm(config)
    reward_model, rm_tokenizer = load_trained_reward_model(config.reward_model, dtype=dtype, cache_dir=config.cache_dir)
    value_model, value_tokenizer = load_trained_reward_model(
        config.value_model or config.reward_model, dtype=dtype, cache_dir=config.cache_dir
    )
    # The reward model re-tokenizes the text with its own tokenizer; the value model reads the policy's tokens.
    if value_tokenizer.get_vocab() != tokenizer.get_vocab():
        raise RecipeError(
            "the value model's tokenizer (by default the reward model's) differs from the policy's; the value "
            "model reads the policy's tokens: set value_model to a classifier with the policy's vocabulary"
        )
    for model in (policy, reward_model, value_model):
        model.to(device)
    trainer = PPOTrainer(
        config, policy, tokenizer, reward_model=reward_model, value_model=value_model, reward_tokenizer=rm_tokenizer
    )
    return trainer, tokenizer, base


def main(config: PPOConfig) -> dict[str, Any]:
    """Run ``max_steps`` PPO steps; returns the first/last stats, the held-out evaluations and output paths."""
    from tqdm.auto import tqdm  # type: ignore[import-untyped]

    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    trainer, tokenizer, base = build_trainer(config)
    train_prompts, eval_prompts, messages = render_prompts(config, tokenizer)
    trainer.prompt_messages.update(messages)  # the reward model renders them with its own chat template
    rng = random.Random(config.seed)
    start, pool = 0, list[str]()
    resume = _resume_path(config)
    if resume is not None:
        start, pool = load_checkpoint(trainer, resume, rng)
        log.info("resumed from %s at step %d", resume, start)
        rows = [r for r in history(out) if r["step"] <= start]
        (out / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    else:
        (out / "history.jsonl").unlink(missing_ok=True)
    (out / "recipe.json").write_text(json.dumps(asdict(config), indent=2), encoding="utf-8")
    logger = _Logger(config, out)
    eval_every = config.eval_steps or config.save_steps
    evals: list[dict[str, float]] = []
    if eval_prompts and start == 0:
        first = evaluate(
            trainer,
            eval_prompts,
            config.batch_size,
            out / "samples" / "step-0.jsonl",
            messages,
            config.eval_seed,
            config.eval_greedy,
        )
        logger.log(0, first)
        evals.append({"step": 0, **first})
    started = time.perf_counter()
    tokens = 0
    for step in tqdm(range(start + 1, config.max_steps + 1), disable=config.disable_tqdm, desc="ppo", initial=start):
        batch: list[str] = []
        while len(batch) < config.batch_size:
            if not pool:
                pool = list(train_prompts)
                rng.shuffle(pool)
            batch.append(pool.pop())
        stats = trainer.step(batch)
        tokens += int(stats["response_length"] * len(batch))
        stats["seconds"] = time.perf_counter() - started
        if eval_prompts and (step % eval_every == 0 or step == config.max_steps):
            samples = out / "samples" / f"step-{step}.jsonl"
            result = evaluate(
                trainer, eval_prompts, config.batch_size, samples, messages, config.eval_seed, config.eval_greedy
            )
            stats |= result
            evals.append({"step": step, **result})
        logger.log(step, stats)
        if step % config.save_steps == 0 or step == config.max_steps:
            save_checkpoint(trainer, config, step, pool, rng)
    logger.close()
    policy = trainer.policy
    written = write_outputs(policy.save_pretrained, policy, tokenizer, config, base, lora=trainer.use_lora)
    png = plot(out, config.target_kl if config.adaptive_kl else None)
    rows = [r for r in history(out) if "reward_mean" in r]
    metrics: dict[str, Any] = {"steps": config.max_steps, "generated_tokens": tokens}
    if rows:
        metrics |= {"first": rows[0], "last": rows[-1]}
    if evals:
        metrics["evals"] = evals
    return {"metrics": metrics, **written, "history": str(out / "history.jsonl"), "plot": str(png) if png else None}


#: The recipe class `aligngate train ppo` builds from YAML (the trainer's config).
RECIPE = PPOConfig


if __name__ == "__main__":
    raise SystemExit(run_main(PPOConfig, main))
