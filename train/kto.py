"""Kahneman-Tversky optimisation (TRL ``KTOTrainer``) on unpaired ``{prompt, completion, label}`` rows (an
unpaired file, or preference pairs split into a desirable and an undesirable row)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from train.common import (
    TrainConfig,
    final_eval,
    load_causal_lm,
    peft_config,
    resume_arg,
    run_main,
    save_outputs,
    to_datasets,
    trl_args,
    unpaired_rows,
)


@dataclass
class KTORecipe(TrainConfig):
    """KTO recipe: the shared keys plus KTO's temperature and class weights."""

    beta: float = 0.1
    desirable_weight: float = 1.0
    undesirable_weight: float = 1.0
    learning_rate: float = 5e-5
    per_device_train_batch_size: int = 4


def main(config: KTORecipe) -> dict[str, Any]:
    from trl import KTOConfig, KTOTrainer

    train_ds, eval_ds = to_datasets(unpaired_rows(config.dataset), config)
    model, tokenizer, base = load_causal_lm(config)
    args = KTOConfig(
        **trl_args(config),
        max_length=config.max_length,
        beta=config.beta,
        desirable_weight=config.desirable_weight,
        undesirable_weight=config.undesirable_weight,
    )
    if eval_ds is None:
        args.eval_strategy = "no"
    trainer = KTOTrainer(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=tokenizer,
        peft_config=peft_config(config),
    )
    result = trainer.train(resume_from_checkpoint=resume_arg(config))
    metrics: dict[str, Any] = dict(result.metrics)
    if eval_ds is not None:
        metrics.update(final_eval(trainer))
    return {"metrics": metrics, **save_outputs(trainer, tokenizer, config, base)}


#: The recipe class `aligngate train kto` builds from YAML.
RECIPE = KTORecipe


if __name__ == "__main__":
    raise SystemExit(run_main(KTORecipe, main))
