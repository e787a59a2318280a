"""Supervised fine-tuning (TRL ``SFTTrainer``) on prompt-completion rows, loss on the completion only.

Used for the rewriter (BPO data), the aligner (preference pairs → correction triplets) and the base model
(prompt → chosen response). ``python -m train.sft RECIPE.yaml [key=value ...]`` or
``aligngate train sft --config RECIPE.yaml [key=value ...]``.
"""

from __future__ import annotations

import logging
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
    sft_rows,
    to_datasets,
    trl_args,
)

log = logging.getLogger(__name__)


@dataclass
class SFTRecipe(TrainConfig):
    """SFT recipe: the shared keys plus TRL's packing / completion-only switches."""

    completion_only_loss: bool = True
    packing: bool = False


def main(config: SFTRecipe) -> dict[str, Any]:
    """Train, save (adapter / model, optional merge) and return the final metrics and output paths."""
    from trl import SFTConfig, SFTTrainer

    train_ds, eval_ds = to_datasets(sft_rows(config.dataset), config)
    model, tokenizer, base = load_causal_lm(config)
    args = SFTConfig(
        **trl_args(config),
        max_length=config.max_length,
        completion_only_loss=config.completion_only_loss,
        packing=config.packing,
    )
    if eval_ds is None:
        args.eval_strategy = "no"
    trainer = SFTTrainer(
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


#: The recipe class `aligngate train sft` builds from YAML.
RECIPE = SFTRecipe


if __name__ == "__main__":
    raise SystemExit(run_main(SFTRecipe, main))
