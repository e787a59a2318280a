"""Direct preference optimisation (TRL ``DPOTrainer``) on conversational preference pairs; ``loss_type``
selects DPO (``sigmoid``), IPO (``ipo``), ``hinge``, ``robust``, … With LoRA the reference model is the base
with the adapter disabled (no second copy in memory).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from train.config import TrainConfig
from train.modeling import load_causal_lm
from train.rows import preference_rows, to_datasets
from train.run import run_main
from train.trl_fit import fit, trl_args


@dataclass
class DPORecipe(TrainConfig):
    """DPO recipe: the shared keys plus the preference loss and its temperature."""

    loss_type: str = "sigmoid"
    beta: float = 0.1
    learning_rate: float = 5e-5


def main(config: DPORecipe) -> dict[str, Any]:
    from trl import DPOConfig, DPOTrainer

    train_ds, eval_ds = to_datasets(preference_rows(config.dataset), config)
    model, tokenizer, base = load_causal_lm(config)
    args = DPOConfig(**trl_args(config), max_length=config.max_length, loss_type=[config.loss_type], beta=config.beta)
    return fit(DPOTrainer, args, config, model, tokenizer, base, train_ds, eval_ds)


#: The recipe class `aligngate train dpo` builds from YAML.
RECIPE = DPORecipe


if __name__ == "__main__":
    raise SystemExit(run_main(DPORecipe, main))
