"""The TRL side of the SFT, RM, DPO and KTO methods.

:func:`trl_args` maps the shared recipe keys onto the keyword arguments of a TRL config (a
``transformers.TrainingArguments`` subclass); :func:`resume_arg` resolves ``resume_from_checkpoint``;
:func:`final_eval` reads (or runs) the evaluation at the last step; :func:`fit` is the shared tail: build the TRL
trainer, train, evaluate once more when the last step did not, save with :func:`train.outputs.save_outputs`.
torch is imported inside the functions.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from train.config import TrainConfig
from train.modeling import peft_config, torch_dtype
from train.outputs import save_outputs

log = logging.getLogger(__name__)


def trl_args(config: TrainConfig) -> dict[str, Any]:
    """Keyword arguments every TRL config (a ``transformers.TrainingArguments`` subclass) takes from the recipe."""
    import torch

    dtype = torch_dtype(config)
    has_eval = config.eval_share > 0
    eval_steps = config.eval_steps if config.eval_steps is not None else config.save_steps
    return {
        # TRL's configs default to True; the recipe decides (off for small CPU runs, on for the 7B recipes).
        "gradient_checkpointing": config.gradient_checkpointing,
        "output_dir": config.output_dir,
        "seed": config.seed,
        "max_steps": config.max_steps,
        "num_train_epochs": config.num_train_epochs,
        "learning_rate": config.learning_rate,
        "per_device_train_batch_size": config.per_device_train_batch_size,
        "per_device_eval_batch_size": config.per_device_eval_batch_size,
        "gradient_accumulation_steps": config.gradient_accumulation_steps,
        "warmup_steps": config.warmup_steps,
        "lr_scheduler_type": config.lr_scheduler_type,
        "logging_steps": config.logging_steps,
        "eval_strategy": "steps" if has_eval else "no",
        "eval_steps": eval_steps if has_eval else None,
        "eval_on_start": has_eval and config.eval_on_start,
        "save_strategy": "steps",
        "save_steps": config.save_steps,
        "save_total_limit": config.save_total_limit,
        "report_to": list(config.report_to) or "none",
        "disable_tqdm": config.disable_tqdm,
        "bf16": dtype == torch.bfloat16,
        "fp16": dtype == torch.float16,
        "use_cpu": not torch.cuda.is_available(),
    }


def resume_arg(config: TrainConfig) -> str | bool | None:
    """``resume_from_checkpoint`` for ``trainer.train``: ``true`` only when a checkpoint exists (else a fresh run)."""
    value = config.resume_from_checkpoint
    if value is True:
        if not any(Path(config.output_dir).glob("checkpoint-*")):
            log.warning("resume_from_checkpoint: no checkpoint in %s yet; starting fresh", config.output_dir)
            return None
        return True
    return value or None


def final_eval(trainer: Any) -> dict[str, Any]:
    """Eval metrics at the last step: the trainer's own final evaluation when it ran one, else a fresh one."""
    step = trainer.state.global_step
    for entry in reversed(trainer.state.log_history):
        if entry.get("step") == step and any(k.startswith("eval_") for k in entry):
            return {k: v for k, v in entry.items() if k.startswith("eval_")}
    metrics: dict[str, Any] = trainer.evaluate()
    return metrics


def fit(
    trainer_cls: Any,
    args: Any,
    config: TrainConfig,
    model: Any,
    tokenizer: Any,
    base: Path,
    train_ds: Any,
    eval_ds: Any,
) -> dict[str, Any]:
    """The shared tail of the SFT/DPO/KTO scripts: build the TRL trainer, train (resuming when asked), evaluate
    once more when the last step did not, save; returns the metrics and the output paths."""
    if eval_ds is None:
        args.eval_strategy = "no"
        args.eval_on_start = False
    trainer = trainer_cls(
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
