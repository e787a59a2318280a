"""Reward modelling (TRL ``RewardTrainer``): a sequence classifier with one output on preference pairs.

``pad_token_id`` is set on the tokenizer and on the model config (the score is read at the last non-pad
token; without it, the wrong token is read). Reports pairwise accuracy (chosen scored above rejected) on the
eval split.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from train.common import (
    TrainConfig,
    load_tokenizer,
    model_dir,
    peft_config,
    preference_rows,
    resume_arg,
    run_main,
    save_outputs,
    to_datasets,
    torch_dtype,
    trl_args,
)


@dataclass
class RMRecipe(TrainConfig):
    """Reward-model recipe: the shared keys plus reward centring."""

    center_rewards_coefficient: float | None = None
    learning_rate: float = 1e-4


def load_reward_model(config: TrainConfig) -> tuple[Any, Any, Path]:
    """(AutoModelForSequenceClassification num_labels=1, tokenizer, base dir), pad token set on both."""
    from transformers import AutoModelForSequenceClassification

    path = model_dir(config)
    tokenizer = load_tokenizer(path)
    model = AutoModelForSequenceClassification.from_pretrained(str(path), num_labels=1, dtype=torch_dtype(config))
    model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer, path


def _text(tokenizer: Any, prompt: Any, completion: Any) -> str:
    if isinstance(prompt, str):
        return prompt + (completion if isinstance(completion, str) else completion[0]["content"])
    text: str = tokenizer.apply_chat_template(list(prompt) + list(completion), tokenize=False)
    return text


def pairwise_accuracy(model: Any, tokenizer: Any, rows: Any, max_length: int = 512, batch_size: int = 8) -> float:
    """Share of preference rows whose chosen response scores above the rejected one."""
    import torch

    rows = list(rows)
    if not rows:
        return float("nan")
    model.eval()
    device = next(model.parameters()).device
    wins = 0
    side = tokenizer.padding_side
    tokenizer.padding_side = "right"
    try:
        for start in range(0, len(rows), batch_size):
            batch = rows[start : start + batch_size]
            texts = [_text(tokenizer, r["prompt"], r["chosen"]) for r in batch]
            texts += [_text(tokenizer, r["prompt"], r["rejected"]) for r in batch]
            enc = tokenizer(texts, return_tensors="pt", padding=True, truncation=True, max_length=max_length)
            with torch.no_grad():
                scores = model(**{k: v.to(device) for k, v in enc.items()}).logits[:, 0].float()
            n = len(batch)
            wins += int((scores[:n] > scores[n:]).sum().item())
    finally:
        tokenizer.padding_side = side
    return wins / len(rows)


def main(config: RMRecipe) -> dict[str, Any]:
    from trl import RewardConfig, RewardTrainer

    train_ds, eval_ds = to_datasets(preference_rows(config.dataset), config)
    model, tokenizer, base = load_reward_model(config)
    args = RewardConfig(
        **trl_args(config),
        max_length=config.max_length,
        center_rewards_coefficient=config.center_rewards_coefficient,
    )
    if eval_ds is None:
        args.eval_strategy = "no"
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
        metrics["eval_pairwise_accuracy"] = pairwise_accuracy(
            trainer.model, tokenizer, eval_ds, config.max_length, config.per_device_eval_batch_size
        )
    return {"metrics": metrics, **save_outputs(trainer, tokenizer, config, base)}


#: The recipe class `aligngate train rm` builds from YAML.
RECIPE = RMRecipe


if __name__ == "__main__":
    raise SystemExit(run_main(RMRecipe, main))
