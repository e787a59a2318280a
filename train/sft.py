"""Supervised fine-tuning (TRL ``SFTTrainer``) on prompt-completion rows, loss on the completion only.

Used for the rewriter (BPO data), the aligner (preference pairs → correction triplets) and the base model
(prompt → chosen response). ``python -m train.sft RECIPE.yaml [key=value ...]`` or
``aligngate train sft --config RECIPE.yaml [key=value ...]``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from train.config import TrainConfig
from train.modeling import load_causal_lm
from train.rows import datasets_of, sft_splits
from train.run import run_main
from train.trl_fit import fit, trl_args

log = logging.getLogger(__name__)


@dataclass
class SFTRecipe(TrainConfig):
    """SFT recipe: the shared keys plus TRL's packing / completion-only switches."""

    completion_only_loss: bool = True
    packing: bool = False


def main(config: SFTRecipe) -> dict[str, Any]:
    """Train, save (adapter / model, optional merge) and return the final metrics and output paths."""
    from trl import SFTConfig, SFTTrainer

    train_ds, eval_ds = datasets_of(*sft_splits(config))
    model, tokenizer, base = load_causal_lm(config)
    args = SFTConfig(
        **trl_args(config),
        max_length=config.max_length,
        completion_only_loss=config.completion_only_loss,
        packing=config.packing,
    )
    return fit(SFTTrainer, args, config, model, tokenizer, base, train_ds, eval_ds)


#: The recipe class `aligngate train sft` builds from YAML.
RECIPE = SFTRecipe


if __name__ == "__main__":
    raise SystemExit(run_main(SFTRecipe, main))
