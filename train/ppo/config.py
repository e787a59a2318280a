"""The one PPO configuration: :class:`PPOConfig` is both the recipe ``aligngate train ppo`` builds from YAML and
what :class:`train.ppo.trainer.PPOTrainer` takes, as TRL's method configs subclass ``TrainingArguments``. Every
PPO hyper-parameter is declared here once, with one default.

Plain dataclasses, no torch: recipes are parsed (and their errors reported) before any model is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from core.recipe import RecipeError
from train.config import TrainConfig


@dataclass
class PPOConfig(TrainConfig):
    """PPO: the shared keys plus the reward model and PPO's own hyper-parameters (defaults follow Ziegler et al.).

    Of the shared keys PPO uses ``model``, ``output_dir``, ``dataset``, ``eval_share``, ``seed``, ``lora*``,
    ``merge``, ``max_steps``, ``learning_rate``, ``logging_steps``, ``eval_steps``, ``save_steps``,
    ``save_total_limit``, ``report_to``, ``resume_from_checkpoint``, ``disable_tqdm``, ``dtype`` and ``cache_dir``;
    the TRL-only ones (``per_device_*``, ``gradient_accumulation_steps``, ``warmup_steps``, ...) are not used.
    The policy gets a LoRA adapter when ``lora`` is true and ``lora_r`` > 0, else it is trained in full.
    """

    #: ``aligngate train rm`` output (``runs/rm/final``), an HF directory or ``builtin:`` (untrained head).
    reward_model: str = "runs/rm/final"
    #: Initial value model; default: the reward model.
    value_model: str | None = None
    #: Of the policy (and of the value model unless ``value_learning_rate`` is set).
    learning_rate: float = 1e-5
    value_learning_rate: float | None = None
    #: Prompts (rollouts) per PPO step.
    batch_size: int = 16
    #: Rollouts per gradient update.
    mini_batch_size: int = 8
    #: Passes over each rollout batch.
    ppo_epochs: int = 4
    max_grad_norm: float = 1.0
    kl_estimator: Literal["k1", "k3"] = "k1"
    init_kl_coef: float = 0.2
    adaptive_kl: bool = True
    #: Target of the adaptive KL controller, in nats per sequence.
    target_kl: float = 6.0
    kl_horizon: float = 10000.0
    gamma: float = 1.0
    lam: float = 0.95
    cliprange: float = 0.2
    cliprange_value: float = 0.2
    vf_coef: float = 0.1
    whiten_advantages: bool = True
    #: New tokens per response. A response that has not written EOS (its end of turn) by then is cut off.
    max_new_tokens: int = 48
    #: Subtracted from the reward-model score of a response cut off without EOS (TRL's ``missing_eos_penalty``;
    #: null: no penalty). A response that ended is scored as a finished chat turn; a cut one is scored as it stands
    #: minus this. The default, 1.0, is TRL's example value; with the built-in model's reward model it is 1.5-2
    #: standard deviations of the scores (0.58 within a rollout batch, median; 0.64 over held-out answers) and four
    #: times what PPO once gained by pleasing it with cut answers (+0.24): a cut answer must beat a finished one
    #: by that much to be preferred. Among cut answers it is a constant, so it does not reorder them.
    missing_eos_penalty: float | None = 1.0
    temperature: float = 1.0
    #: Prompts longer than this (tokens, after the chat template) are dropped.
    max_prompt_length: int = 256
    #: Held-out prompts scored at each evaluation (0: evaluation off).
    eval_prompts: int = 32
    #: Sampling seed of every evaluation: each one draws the same random numbers, so two evaluations differ by
    #: the policy rather than by luck (null: unseeded, the training RNG runs on).
    eval_seed: int | None = 0
    #: Decode held-out answers greedily (deterministic: evaluations differ only by the policy) instead of sampling
    #: at ``temperature`` like the rollouts.
    eval_greedy: bool = False
    save_steps: int = 10

    def __post_init__(self) -> None:
        if self.kl_estimator not in ("k1", "k3"):
            raise RecipeError(f"kl_estimator must be k1 or k3, got {self.kl_estimator!r}")
        if self.batch_size < 1 or self.mini_batch_size < 1 or self.batch_size % self.mini_batch_size:
            raise RecipeError("batch_size must be a positive multiple of mini_batch_size")
        if self.missing_eos_penalty is not None and not self.missing_eos_penalty >= 0:
            raise RecipeError(f"missing_eos_penalty must be >= 0 or null, got {self.missing_eos_penalty!r}")
        if self.max_new_tokens < 1:
            raise RecipeError(f"max_new_tokens must be positive, got {self.max_new_tokens}")

    @property
    def use_lora(self) -> bool:
        """Whether the policy is wrapped in a LoRA adapter (``lora`` and a positive ``lora_r``)."""
        return self.lora and self.lora_r > 0
