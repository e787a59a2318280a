"""Reward modelling (TRL ``RewardTrainer``): a sequence classifier with one output on preference pairs.

``pad_token_id`` is set on the tokenizer and on the model config (the score is read at the last non-pad
token; without it, the wrong token is read). Reports pairwise accuracy (chosen scored above rejected) on the
eval split, overall and per source when the recipe lists ``extra_datasets`` (each source is split on its own,
so e.g. HH-RLHF and AlpacaEval held-out accuracies are reported separately).

:func:`load_trained_reward_model` loads what ``aligngate train rm`` wrote (a LoRA adapter with its score head,
or a full model) for PPO and the evaluation helpers; loading and scoring live in :mod:`models.reward`, which
``aligngate eval``'s reward-model judge uses too.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.recipe import RecipeError
from models import reward as reward_models
from models.reward import RewardModelError, classifier, completion_scores
from models.reward import render as _text
from train.config import DatasetSpec, TrainConfig
from train.data.builders import train_eval_split
from train.modeling import model_dir, peft_config, torch_dtype
from train.outputs import save_outputs
from train.rows import preference_rows
from train.run import run_main
from train.trl_fit import resume_arg, trl_args

log = logging.getLogger(__name__)


@dataclass
class RMRecipe(TrainConfig):
    """Reward-model recipe: the shared keys plus reward centring."""

    center_rewards_coefficient: float | None = None
    learning_rate: float = 1e-4
    #: More preference sources, trained on together with ``dataset``; each is split and evaluated on its own.
    extra_datasets: list[DatasetSpec] = field(default_factory=list)


def load_reward_model(config: TrainConfig) -> tuple[Any, Any, Path]:
    """(AutoModelForSequenceClassification num_labels=1, tokenizer, base dir), pad token set on both."""
    path = model_dir(config)
    model, tokenizer = classifier(path, torch_dtype(config))
    return model, tokenizer, path


def pair_scores(
    model: Any, tokenizer: Any, rows: Any, max_length: int = 512, batch_size: int = 8
) -> list[tuple[float, float]]:
    """``(chosen score, rejected score)`` of each preference row; a forward pass holds ``batch_size`` rows."""
    rows = list(rows)
    items = [(row["prompt"], row[side]) for row in rows for side in ("chosen", "rejected")]
    flat = completion_scores(model, tokenizer, items, max_length, 2 * batch_size)
    return list(zip(flat[0::2], flat[1::2], strict=True))


def pairwise_accuracy(model: Any, tokenizer: Any, rows: Any, max_length: int = 512, batch_size: int = 8) -> float:
    """Share of preference rows whose chosen response scores above the rejected one (NaN for no rows)."""
    scores = pair_scores(model, tokenizer, rows, max_length, batch_size)
    if not scores:
        return float("nan")
    return sum(chosen > rejected for chosen, rejected in scores) / len(scores)


def source_name(spec: DatasetSpec) -> str:
    """A short name for a dataset in metric keys: a bundled ``FOLDER/pairs.jsonl`` is its folder, any other file
    its stem (``bundled:bpo/bpo_test.json`` → ``bpo_test``)."""
    if spec.path and spec.path.startswith("bundled:"):
        rel = Path(spec.path[len("bundled:") :])
        return rel.parent.name if rel.stem == "pairs" and rel.parent.name else rel.stem
    if spec.path:
        return Path(spec.path).stem
    return spec.kind or "default"


def _last_content(response: Any) -> str:
    return response if isinstance(response, str) else str(response[-1]["content"])


def _with_content(response: Any, content: str) -> Any:
    if isinstance(response, str):
        return content
    return [*response[:-1], {**response[-1], "content": content}]


def truncate_pairs(rows: list[Any], tokenizer: Any, max_length: int) -> tuple[list[Any], int, int]:
    """Cut the end of over-long chosen/rejected answers so each whole sequence fits ``max_length`` tokens.

    TRL's reward trainer drops such pairs instead, which would drop most long-answer (e.g. AlpacaEval) data.
    A pair is dropped only when its prompt leaves under 16 tokens for the answer or the two cut answers are
    identical. Returns (rows, truncated, dropped).
    """
    out: list[Any] = []
    truncated = dropped = 0
    for row in rows:
        new = dict(row)
        keep = True
        for side in ("chosen", "rejected"):
            length = len(tokenizer(_text(tokenizer, row["prompt"], row[side]), add_special_tokens=False)["input_ids"])
            if length <= max_length:
                continue
            ids = tokenizer(_last_content(row[side]), add_special_tokens=False)["input_ids"]
            budget = len(ids) - (length - max_length) - 8  # room for tokens merging at the cut and an added EOS
            if budget < 16:
                keep = False
                break
            new[side] = _with_content(row[side], tokenizer.decode(ids[:budget]))
            truncated += 1
        if keep and _last_content(new["chosen"]) == _last_content(new["rejected"]):
            keep = False
        if keep:
            out.append(new)
        else:
            dropped += 1
    return out, truncated, dropped


def split_sources(config: RMRecipe) -> tuple[list[Any], dict[str, list[Any]]]:
    """(train rows of every source, shuffled together; held-out rows per source name)."""
    train: list[Any] = []
    held_out: dict[str, list[Any]] = {}
    for spec in [config.dataset, *config.extra_datasets]:
        name = source_name(spec)
        if name in held_out:
            raise RecipeError(f"two datasets share the name {name!r}; rename one of the files")
        part_train, part_eval = train_eval_split(preference_rows(spec), config.eval_share, seed=config.seed)
        log.info("%s: %d train, %d eval", name, len(part_train), len(part_eval))
        train += part_train
        held_out[name] = part_eval
    if not train:
        raise RecipeError("no training rows left after the eval split")
    random.Random(config.seed).shuffle(train)
    return train, held_out


def load_trained_reward_model(path: str | Path, dtype: Any = None, cache_dir: str | None = None) -> tuple[Any, Any]:
    """(reward model, tokenizer) from ``aligngate train rm`` output or any sequence classifier
    (:func:`models.reward.load_reward_model`; a missing base is a :class:`RecipeError` here)."""
    try:
        return reward_models.load_reward_model(path, dtype, cache_dir)
    except RewardModelError as exc:
        raise RecipeError(str(exc)) from None


def main(config: RMRecipe) -> dict[str, Any]:
    from datasets import Dataset
    from trl import RewardConfig, RewardTrainer

    train_rows, held_out = split_sources(config)
    model, tokenizer, base = load_reward_model(config)
    train_rows, truncated, dropped = truncate_pairs(train_rows, tokenizer, config.max_length)
    log.info("train pairs over %d tokens: %d answers cut, %d pairs dropped", config.max_length, truncated, dropped)
    held_out = {name: truncate_pairs(rows, tokenizer, config.max_length)[0] for name, rows in held_out.items()}
    eval_rows = [row for rows in held_out.values() for row in rows]
    train_ds = Dataset.from_list(train_rows)
    eval_ds = Dataset.from_list(eval_rows) if eval_rows else None
    args = RewardConfig(
        **trl_args(config),
        max_length=config.max_length,
        center_rewards_coefficient=config.center_rewards_coefficient,
    )
    if eval_ds is None:
        args.eval_strategy = "no"
        args.eval_on_start = False
    trainer = RewardTrainer(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=tokenizer,
        peft_config=peft_config(config, task_type="SEQ_CLS"),
    )
    result = trainer.train(resume_from_checkpoint=resume_arg(config))
    metrics: dict[str, Any] = dict(result.metrics)
    if eval_ds is not None:
        wins = 0.0
        for name, rows in held_out.items():
            if not rows:
                continue
            accuracy = pairwise_accuracy(
                trainer.model, tokenizer, rows, config.max_length, config.per_device_eval_batch_size
            )
            wins += accuracy * len(rows)
            if len(held_out) > 1:
                metrics[f"eval_pairwise_accuracy/{name}"] = accuracy
                metrics[f"eval_pairs/{name}"] = len(rows)
        metrics["eval_pairwise_accuracy"] = wins / len(eval_rows)
    return {"metrics": metrics, **save_outputs(trainer, tokenizer, config, base)}


#: The recipe class `aligngate train rm` builds from YAML.
RECIPE = RMRecipe


if __name__ == "__main__":
    raise SystemExit(run_main(RMRecipe, main))
