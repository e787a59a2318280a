"""The recipe keys every training method shares: :class:`TrainConfig` (base model, output directory, LoRA,
optimisation, the logging / evaluation / checkpoint cadence, dtype) and :class:`DatasetSpec` (where the rows come
from).

A method's recipe subclasses :class:`TrainConfig` with its own keys and defaults (``train.sft.SFTRecipe``,
``train.ppo.config.PPOConfig``, ...); :func:`core.recipe.load_recipe` builds any of them from YAML plus
``key=value`` overrides. Plain dataclasses: importing this module is cheap (no torch).
"""

from __future__ import annotations

from dataclasses import dataclass, field


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
