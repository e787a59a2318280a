"""Shared pieces of the trainers: the recipe keys every method shares (parsed by :mod:`core.recipe`), model loading for
training (HF directory, GGUF file or ``builtin:NAME``, via :func:`models.local.source.resolve_source`), LoRA or
full fine-tuning, datasets from :mod:`train.data`, TRL argument building and saving (adapter, optional merge).

Heavy imports (torch, transformers, peft, trl, datasets) happen inside functions so that recipe parsing stays cheap.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from core.recipe import RecipeError, load_recipe
from train.data import bundled
from train.data.builders import (
    aligner_sft,
    aligner_triplets,
    preference_to_kto,
    preferences_from_bpo,
    rewriter_pairs,
    rewriter_sft,
    sft_from_dolly,
    sft_from_preferences,
    train_eval_split,
)
from train.data.loaders import load_any

log = logging.getLogger(__name__)

C = TypeVar("C", bound="TrainConfig")


@dataclass
class DatasetSpec:
    """Where training rows come from: a file (``path``) and its kind (None: sniffed from the first row)."""

    path: str | None = None
    kind: str | None = None
    #: For SFT: how rows become prompt-completion pairs: ``auto`` (from the kind), ``rewriter``, ``aligner``, ``chat``.
    task: str = "auto"
    #: Rewriter/aligner SFT template: ``bpo``, ``bpo-chat``, ``aligner-v1``, ``aligner-v2``, ``aligner-chat``.
    template: str | None = None
    #: Keep at most this many rows (after building, before the split); None keeps all.
    max_rows: int | None = None


@dataclass
class TrainConfig:
    """Keys every recipe shares. Method configs add their own (see ``train.sft.SFTRecipe`` etc.)."""

    model: str = "builtin:smollm2-135m-instruct"
    output_dir: str = "runs/out"
    dataset: DatasetSpec = field(default_factory=DatasetSpec)
    eval_share: float = 0.05
    seed: int = 0
    # LoRA (``lora: false`` → full fine-tuning)
    lora: bool = True
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    #: Also write ``output_dir/merged``: base + adapter merged, a plain HF directory (for vLLM).
    merge: bool = False
    # optimisation
    max_steps: int = 20
    num_train_epochs: float = 1.0
    learning_rate: float = 2e-4
    per_device_train_batch_size: int = 2
    per_device_eval_batch_size: int = 2
    gradient_accumulation_steps: int = 1
    warmup_steps: int = 0
    lr_scheduler_type: str = "linear"
    max_length: int = 512
    gradient_checkpointing: bool = False
    # logging, evaluation, checkpoints
    logging_steps: int = 5
    eval_steps: int | None = None
    #: Also evaluate before the first step (a baseline for the eval curves).
    eval_on_start: bool = False
    save_steps: int = 50
    save_total_limit: int | None = 2
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"])
    #: ``true`` (the latest checkpoint in output_dir), a checkpoint path, or null.
    resume_from_checkpoint: str | bool | None = None
    disable_tqdm: bool = False
    #: ``auto``: bf16 on CUDA, else fp32; or ``bf16``, ``fp16``, ``fp32``.
    dtype: str = "auto"
    cache_dir: str | None = None


# ---------------------------------------------------------------------------------------------------------------
# Data


BUNDLED_PREFIX = "bundled:"


def dataset_path(spec: DatasetSpec, default: Path) -> Path:
    """The file ``spec`` names: ``bundled:REL`` is under ``train/datasets/``; no path → the default for its kind."""
    if spec.path:
        if spec.path.startswith(BUNDLED_PREFIX):
            return bundled.DATASETS_DIR / spec.path[len(BUNDLED_PREFIX) :]
        return Path(spec.path).expanduser()
    if spec.task == "rewriter":
        return bundled.BPO_TEST
    by_kind = {"bpo": bundled.BPO_TEST, "dolly": bundled.DOLLY_EVAL, "preferences": bundled.ALPACA_EVAL_PREFS}
    return by_kind.get(spec.kind or "", default)


def _load_rows(spec: DatasetSpec, default: Path) -> tuple[str, list[Any]]:
    path = dataset_path(spec, default)
    loaded = load_any(path, spec.kind)
    log.info("loaded %s", loaded.summary())
    return loaded.kind, list(loaded.rows)


def preference_rows(spec: DatasetSpec, default: Path = bundled.HH_RLHF_HARMLESS) -> list[Any]:
    """Conversational preference rows (RM, DPO) from hh-rlhf / preferences / bpo files."""
    kind, rows = _load_rows(spec, default)
    if kind == "bpo":
        rows = list(preferences_from_bpo(rows))
    elif kind not in ("hh-rlhf", "preferences"):
        raise RecipeError(f"dataset kind {kind!r} has no preference pairs (need hh-rlhf, preferences or bpo)")
    return _cap(rows, spec)


def unpaired_rows(spec: DatasetSpec, default: Path = bundled.HH_RLHF_HARMLESS) -> list[Any]:
    """KTO rows ``{prompt, completion, label}``: an unpaired file as is, or preference pairs split in two."""
    kind, rows = _load_rows(spec, default)
    if kind == "unpaired":
        return _cap(rows, spec)
    if kind == "bpo":
        rows = list(preferences_from_bpo(rows))
    elif kind not in ("hh-rlhf", "preferences"):
        raise RecipeError(f"dataset kind {kind!r} cannot give KTO rows (need unpaired or preference data)")
    return _cap(list(preference_to_kto(rows)), spec)


def sft_rows(spec: DatasetSpec, default: Path = bundled.HH_RLHF_HARMLESS) -> list[Any]:
    """Prompt-completion rows for SFT; ``spec.task`` picks rewriter / aligner / chat (base model) building."""
    kind, rows = _load_rows(spec, default)
    task = spec.task
    if task == "auto":
        task = {"bpo": "rewriter", "rewriter": "rewriter", "aligner": "aligner"}.get(kind, "chat")
    if task == "rewriter":
        if kind == "bpo":
            rows = list(rewriter_pairs(rows))
        elif kind != "rewriter":
            raise RecipeError(f"rewriter SFT needs bpo or rewriter data, got {kind!r}")
        out: list[Any] = list(rewriter_sft(rows, spec.template or "bpo"))
    elif task == "aligner":
        if kind in ("hh-rlhf", "preferences"):
            rows = list(aligner_triplets(rows))
        elif kind == "bpo":
            rows = list(aligner_triplets(preferences_from_bpo(rows)))
        elif kind != "aligner":
            raise RecipeError(f"aligner SFT needs aligner or preference data, got {kind!r}")
        out = list(aligner_sft(rows, spec.template or "aligner-v1"))
    elif task == "chat":
        if kind in ("hh-rlhf", "preferences"):
            out = list(sft_from_preferences(rows))
        elif kind == "bpo":
            out = list(sft_from_preferences(preferences_from_bpo(rows)))
        elif kind == "dolly":
            out = list(sft_from_dolly(rows))
        elif kind in ("prompt-completion", "messages"):
            out = rows
        else:
            raise RecipeError(f"chat SFT cannot use {kind!r} data")
    else:
        raise RecipeError(f"dataset.task must be auto, rewriter, aligner or chat, got {spec.task!r}")
    return _cap(out, spec)


def _cap(rows: list[Any], spec: DatasetSpec) -> list[Any]:
    return rows[: spec.max_rows] if spec.max_rows is not None else rows


def to_datasets(rows: list[Any], config: TrainConfig) -> tuple[Any, Any | None]:
    """``datasets.Dataset`` train and eval (None when ``eval_share`` is 0 or the eval side is empty)."""
    from datasets import Dataset

    train, held_out = train_eval_split(rows, config.eval_share, seed=config.seed)
    if not train:
        raise RecipeError("no training rows left after the eval split")
    log.info("rows: %d train, %d eval", len(train), len(held_out))
    return Dataset.from_list(train), (Dataset.from_list(held_out) if held_out else None)


# ---------------------------------------------------------------------------------------------------------------
# Models


def torch_dtype(config: TrainConfig) -> Any:
    import torch

    if config.dtype == "auto":
        return torch.bfloat16 if torch.cuda.is_available() else torch.float32
    table = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    if config.dtype not in table:
        raise RecipeError(f"dtype must be auto, bf16, fp16 or fp32, got {config.dtype!r}")
    return table[config.dtype]


def model_dir(config: TrainConfig) -> Path:
    """The Hugging Face directory of ``config.model`` (a GGUF or built-in model is converted once and cached)."""
    from models.local.source import resolve_source

    return resolve_source(config.model, cache_dir=config.cache_dir).path


def load_tokenizer(path: Path) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(config: TrainConfig) -> tuple[Any, Any, Path]:
    """(model, tokenizer, base directory) for causal-LM training."""
    from transformers import AutoModelForCausalLM

    path = model_dir(config)
    tokenizer = load_tokenizer(path)
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch_dtype(config))
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer, path


def peft_config(config: TrainConfig, task_type: str = "CAUSAL_LM") -> Any:
    """A peft ``LoraConfig`` from the recipe, or None for full fine-tuning."""
    if not config.lora:
        return None
    from peft import LoraConfig

    return LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=list(config.lora_target_modules),
        task_type=task_type,
    )


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


def save_outputs(trainer: Any, tokenizer: Any, config: TrainConfig, base: Path) -> dict[str, str]:
    """Save a TRL trainer's model (:func:`write_outputs`; ``trainer.save_model`` handles sharded runs)."""
    return write_outputs(trainer.save_model, trainer.model, tokenizer, config, base, lora=config.lora)


def write_outputs(
    save: Callable[[str], None], model: Any, tokenizer: Any, config: TrainConfig, base: Path, lora: bool
) -> dict[str, str]:
    """Write ``output_dir/final`` with ``save`` (a peft adapter with LoRA, the full model otherwise) plus the
    tokenizer; with ``merge`` and LoRA also ``output_dir/merged`` (base + adapter, a plain HF directory); and
    ``aligngate-train.json``. Returns what was written."""
    out = Path(config.output_dir)
    final = out / "final"
    save(str(final))
    tokenizer.save_pretrained(str(final))
    written = {"adapter" if lora else "model": str(final)}
    if config.merge and lora:
        merged_dir = out / "merged"
        merged = model.merge_and_unload()
        merged.save_pretrained(str(merged_dir))
        tokenizer.save_pretrained(str(merged_dir))
        written["merged"] = str(merged_dir)
    (out / "aligngate-train.json").write_text(
        json.dumps({"base": str(base), "model": config.model, **written}, indent=2), encoding="utf-8"
    )
    return written


def run_main(cls: type[C], main: Callable[[C], dict[str, Any]], argv: Sequence[str] | None = None) -> int:
    """``python -m train.METHOD RECIPE.yaml [key=value ...]``."""
    import sys

    args = list(sys.argv[1:] if argv is None else argv)
    path = args.pop(0) if args and "=" not in args[0] else None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    result = main(load_recipe(cls, path, args))
    print(json.dumps(result, indent=2, default=str))
    return 0


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
