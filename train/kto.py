"""Kahneman-Tversky optimisation (TRL ``KTOTrainer``) on unpaired ``{prompt, completion, label}`` rows (an
unpaired file, or preference pairs split into a desirable and an undesirable row)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from train.config import TrainConfig
from train.modeling import load_causal_lm
from train.rows import to_datasets, unpaired_rows
from train.run import run_main
from train.trl_fit import fit, trl_args


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
    return fit(KTOTrainer, args, config, model, tokenizer, base, train_ds, eval_ds)


#: The recipe class `aligngate train kto` builds from YAML.
RECIPE = KTORecipe


if __name__ == "__main__":
    raise SystemExit(run_main(KTORecipe, main))
