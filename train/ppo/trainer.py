"""A small PPO trainer for causal LMs: rollout, score, KL-shaped rewards, GAE, clipped updates.

Models:
- **policy**: a causal LM, optionally wrapped in a LoRA adapter (peft). The **reference** is then the same
  model with the adapter disabled (``with policy.disable_adapter():``); without LoRA it is a frozen copy.
- **value model**: a separate ``AutoModelForSequenceClassification(num_labels=1)`` initialised from the reward
  model; its head is applied at every position to get per-token values.
- **reward**: a frozen sequence-classification reward model, or any callable ``reward_fn(prompt_ids,
  response_ids, response_mask) -> (B,)`` scores. The reward model scores text the way
  :mod:`models.reward` (and ``aligngate eval``'s reward-model judge) does, re-tokenized with its own tokenizer
  and chat template and read at the last non-pad token: a response that wrote EOS within ``max_new_tokens`` as a
  finished assistant turn (:func:`models.reward.scoring_item`, end-of-turn included), a response cut off before
  EOS as the unfinished turn it is (:func:`models.reward.open_turn_item`). A prompt is rendered from its chat
  messages (``prompt_messages``, keyed by the prompt text); one without messages is plain text, scored as the
  prompt text followed by the answer.
- **missing_eos_penalty** (TRL's): subtracted from the score of every response cut off before EOS, whatever
  scored it.

Layout of a rollout: prompts are left-padded (``P`` columns), responses right-padded after the first EOS
(``T`` columns); position ids come from the attention mask, so padding does not shift positions.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from train.ppo.config import PPOConfig
from train.ppo.core import (
    AdaptiveKLController,
    FixedKLController,
    apply_missing_eos_penalty,
    gae,
    logprobs_from_logits,
    masked_mean,
    masked_whiten,
    per_token_rewards,
    policy_loss,
    value_loss,
)

RewardFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
#: Chat messages of each prompt, keyed by the prompt text as the policy saw it.
PromptMessages = Mapping[str, Sequence[dict[str, str]]]


@dataclass
class Rollout:
    """One batch of generated experience (all tensors detached)."""

    input_ids: torch.Tensor  #: (B, P + T) prompt + response
    attention_mask: torch.Tensor  #: (B, P + T)
    response_mask: torch.Tensor  #: (B, T), 1 up to and including the first EOS
    prompt_length: int
    logprobs: torch.Tensor  #: (B, T) under the policy that sampled
    values: torch.Tensor  #: (B, T)
    advantages: torch.Tensor  #: (B, T)
    returns: torch.Tensor  #: (B, T)
    scores: torch.Tensor  #: (B,) the reward: ``rm_scores`` less ``missing_eos_penalty`` where not ``ended``
    kl: torch.Tensor  #: (B, T) per-token KL estimate against the reference
    rm_scores: torch.Tensor  #: (B,) the reward model's (or ``reward_fn``'s) score, before the penalty
    ended: torch.Tensor  #: (B,) bool: the response wrote EOS within ``max_new_tokens``
    prompts: list[str]  #: the prompt texts, in row order
    answers: list[str]  #: the responses as text (special tokens dropped): what the reward model read


def _head(model: nn.Module) -> nn.Module:
    for name in ("score", "classifier", "v_head"):
        head = getattr(model, name, None)
        if isinstance(head, nn.Module):
            return head
    raise TypeError(f"{type(model).__name__} has no score/classifier head")


def token_scores(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """A sequence-classification model's head applied at every position: ``(B, L)`` (num_labels=1)."""
    backbone = getattr(model, getattr(model, "base_model_prefix", "model"))
    hidden = backbone(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=_positions(attention_mask)
    ).last_hidden_state
    return cast(torch.Tensor, _head(model)(hidden)).squeeze(-1).float()


def _positions(attention_mask: torch.Tensor) -> torch.Tensor:
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def response_mask_from(tokens: torch.Tensor, eos_token_id: int | None) -> torch.Tensor:
    """1 for each response token up to and including the first EOS, 0 after it."""
    if eos_token_id is None:
        return torch.ones_like(tokens)
    is_eos = (tokens == eos_token_id).long()
    after_eos = is_eos.cumsum(-1) - is_eos  # number of EOS strictly before t
    return (after_eos == 0).long()


def ended_with_eos(tokens: torch.Tensor, eos_token_id: int | None) -> torch.Tensor:
    """``(B,)`` bool: whether each generated response ``(B, T)`` holds an EOS, i.e. ended rather than being cut
    off at ``T`` tokens (padding after EOS, even when the pad token is EOS, does not change that)."""
    if eos_token_id is None:
        return torch.zeros(tokens.shape[0], dtype=torch.bool, device=tokens.device)
    return (tokens == eos_token_id).any(-1)


class PPOTrainer:
    """PPO over a policy, a value model and a reward (model or callable); see the module docstring. ``config``
    is the run's :class:`~train.ppo.config.PPOConfig` (the recipe itself); the trainer reads its PPO
    hyper-parameters, ``seed`` and the ``lora*`` keys."""

    def __init__(
        self,
        config: PPOConfig,
        policy: nn.Module,
        tokenizer: Any,
        reward_model: nn.Module | None = None,
        reward_fn: RewardFn | None = None,
        value_model: nn.Module | None = None,
        ref_model: nn.Module | None = None,
        reward_tokenizer: Any = None,
        prompt_messages: PromptMessages | None = None,
    ) -> None:
        if (reward_model is None) == (reward_fn is None):
            raise ValueError("give exactly one of reward_model and reward_fn")
        self.config = config
        self.tokenizer = tokenizer
        if tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer needs a pad token")
        #: Renders and tokenizes what the reward model scores (default: the policy's tokenizer).
        self.reward_tokenizer = reward_tokenizer if reward_tokenizer is not None else tokenizer
        if self.reward_tokenizer.pad_token_id is None:
            raise ValueError("the reward model's tokenizer needs a pad token")
        #: The chat messages of each prompt text; the reward model renders them with its own template.
        self.prompt_messages: dict[str, Sequence[dict[str, str]]] = dict(prompt_messages or {})
        torch.manual_seed(config.seed)
        self.rng = random.Random(config.seed)
        self.use_lora = config.use_lora
        if self.use_lora:
            from peft import LoraConfig, get_peft_model

            lora = LoraConfig(
                r=config.lora_r,
                lora_alpha=config.lora_alpha,
                lora_dropout=config.lora_dropout,
                target_modules=list(config.lora_target_modules),
                task_type="CAUSAL_LM",
            )
            policy = cast(nn.Module, get_peft_model(cast(Any, policy), lora))
            self.ref_model: nn.Module | None = None
        else:
            self.ref_model = ref_model if ref_model is not None else copy.deepcopy(policy)
            self.ref_model.eval().requires_grad_(False)
        self.policy = policy
        self.reward_fn = reward_fn
        self.reward_model = reward_model
        if reward_model is not None:
            config_ = getattr(reward_model, "config", None)
            if config_ is not None and getattr(config_, "pad_token_id", None) is None:
                # always set: HF pools at the last non-pad token
                config_.pad_token_id = self.reward_tokenizer.pad_token_id
            reward_model.eval().requires_grad_(False)
        if value_model is None:
            if reward_model is None:
                raise ValueError("with a reward_fn, pass a value_model (a sequence classifier, num_labels=1)")
            value_model = copy.deepcopy(reward_model)  # a separate model, initialised from the RM
        value_model.requires_grad_(True)
        self.value_model = value_model
        policy_params = [p for p in self.policy.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            [
                {"params": policy_params, "lr": config.learning_rate},
                {
                    "params": list(self.value_model.parameters()),
                    "lr": config.value_learning_rate or config.learning_rate,
                },
            ],
            eps=1e-5,
        )
        self.kl_ctl: AdaptiveKLController | FixedKLController = (
            AdaptiveKLController(config.init_kl_coef, config.target_kl, config.kl_horizon)
            if config.adaptive_kl
            else FixedKLController(config.init_kl_coef)
        )

    # ---- forward helpers -------------------------------------------------------------------------------
    def _reference(self) -> AbstractContextManager[Any]:
        if self.use_lora:
            return cast(AbstractContextManager[Any], cast(Any, self.policy).disable_adapter())
        return nullcontext()

    def _logprobs(
        self, model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_length: int
    ) -> torch.Tensor:
        logits = model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=_positions(attention_mask)
        ).logits
        logits = logits[:, prompt_length - 1 : -1] / self.config.temperature
        return logprobs_from_logits(logits, input_ids[:, prompt_length:])

    def _values(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_length: int) -> torch.Tensor:
        return token_scores(self.value_model, input_ids, attention_mask)[:, prompt_length - 1 : -1]

    def _score(
        self,
        prompts: Sequence[str],
        answers: Sequence[str],
        ended: torch.Tensor,
        input_ids: torch.Tensor,
        response_mask: torch.Tensor,
        prompt_length: int,
    ) -> torch.Tensor:
        """The reward model's (or ``reward_fn``'s) score of each response, before the missing-EOS penalty."""
        if self.reward_fn is not None:
            scores = self.reward_fn(input_ids[:, :prompt_length], input_ids[:, prompt_length:], response_mask)
            return scores.float().to(input_ids.device)
        finished = ended.tolist()
        values = self.reward_scores(prompts, answers, finished)
        return torch.tensor(values, dtype=torch.float32, device=input_ids.device)

    def scoring_items(
        self, prompts: Sequence[str], answers: Sequence[str], finished: Sequence[bool]
    ) -> list[tuple[Any, Any]]:
        """The ``(prompt, completion)`` the reward model scores for each answer (see the module docstring): a
        finished turn where ``finished``, else the turn as it was cut; plain text for a prompt without messages."""
        from models.reward import open_turn_item, scoring_item

        items: list[tuple[Any, Any]] = []
        for prompt, answer, done in zip(prompts, answers, finished, strict=True):
            messages = self.prompt_messages.get(prompt)
            if messages is None:
                items.append((prompt, answer))
            else:
                items.append((scoring_item if done else open_turn_item)(self.reward_tokenizer, messages, answer))
        return items

    def reward_scores(self, prompts: Sequence[str], answers: Sequence[str], finished: Sequence[bool]) -> list[float]:
        """The reward model's score of each answer (:meth:`scoring_items`), one forward pass per rollout batch,
        with :func:`models.reward.completion_scores` (never cut: the limit is the reward model's context)."""
        from models.reward import completion_scores

        assert self.reward_model is not None
        if not prompts:
            return []
        limit = getattr(getattr(self.reward_model, "config", None), "max_position_embeddings", None) or 1 << 20
        items = self.scoring_items(prompts, answers, finished)
        return completion_scores(
            self.reward_model, self.reward_tokenizer, items, max_length=limit, batch_size=len(items)
        )

    def turn_scores(self, batch: Rollout) -> torch.Tensor:
        """``(B,)`` each response of ``batch`` scored as a finished turn, ended or not — the score
        ``aligngate eval``'s reward-model judge gives its text — and no penalty. With a ``reward_fn``: its scores."""
        scores = batch.rm_scores.clone()
        if self.reward_fn is not None:
            return scores
        cut = [i for i, done in enumerate(batch.ended.tolist()) if not done]
        if cut:
            values = self.reward_scores(
                [batch.prompts[i] for i in cut], [batch.answers[i] for i in cut], [True] * len(cut)
            )
            scores[cut] = torch.tensor(values, dtype=scores.dtype, device=scores.device)
        return scores

    # ---- rollout ---------------------------------------------------------------------------------------
    @torch.no_grad()
    def rollout(self, prompts: Sequence[str], greedy: bool = False) -> Rollout:
        """Sample responses (``greedy``: decode greedily, for evaluation), score them (a cut one less
        ``missing_eos_penalty``), shape rewards with the KL penalty, run GAE."""
        cfg = self.config
        enc = self.tokenizer(list(prompts), return_tensors="pt", padding=True, padding_side="left")
        device = next(self.policy.parameters()).device
        prompt_ids, prompt_mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
        prompt_length = prompt_ids.shape[1]
        self.policy.eval()
        sampling: dict[str, Any] = (
            {"do_sample": False, "temperature": None, "top_k": None, "top_p": None}
            if greedy
            else {"do_sample": True, "temperature": cfg.temperature, "top_k": 0, "top_p": 1.0}
        )
        generated = cast(Any, self.policy).generate(
            input_ids=prompt_ids,
            attention_mask=prompt_mask,
            **sampling,
            max_new_tokens=cfg.max_new_tokens,
            min_new_tokens=1,
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=self.tokenizer.eos_token_id,
        )
        response = generated[:, prompt_length:]
        response_mask = response_mask_from(response, self.tokenizer.eos_token_id)
        ended = ended_with_eos(response, self.tokenizer.eos_token_id)
        response = torch.where(response_mask.bool(), response, torch.full_like(response, self.tokenizer.pad_token_id))
        answers = [
            self.tokenizer.decode(row[mask.bool()], skip_special_tokens=True)
            for row, mask in zip(response, response_mask, strict=True)
        ]
        input_ids = torch.cat([prompt_ids, response], dim=1)
        attention_mask = torch.cat([prompt_mask, response_mask], dim=1)

        logprobs = self._logprobs(self.policy, input_ids, attention_mask, prompt_length)
        with self._reference():
            ref_model = self.policy if self.ref_model is None else self.ref_model
            ref_logprobs = self._logprobs(ref_model, input_ids, attention_mask, prompt_length)
        self.value_model.eval()
        values = self._values(input_ids, attention_mask, prompt_length)
        rm_scores = self._score(prompts, answers, ended, input_ids, response_mask, prompt_length)
        scores = apply_missing_eos_penalty(rm_scores, ended, cfg.missing_eos_penalty)

        rewards, kl = per_token_rewards(
            scores, logprobs, ref_logprobs, response_mask, self.kl_ctl.value, cfg.kl_estimator
        )
        advantages, returns = gae(rewards, values, response_mask, cfg.gamma, cfg.lam)
        if cfg.whiten_advantages:
            advantages = masked_whiten(advantages, response_mask)
        return Rollout(
            input_ids=input_ids,
            attention_mask=attention_mask,
            response_mask=response_mask,
            prompt_length=prompt_length,
            logprobs=logprobs,
            values=values * response_mask,
            advantages=advantages,
            returns=returns,
            scores=scores,
            kl=kl,
            rm_scores=rm_scores,
            ended=ended,
            prompts=list(prompts),
            answers=answers,
        )

    # ---- update ----------------------------------------------------------------------------------------
    def _minibatches(self, n: int) -> Iterator[list[int]]:
        order = list(range(n))
        self.rng.shuffle(order)
        size = self.config.mini_batch_size
        for start in range(0, n, size):
            yield order[start : start + size]

    def update(self, batch: Rollout) -> dict[str, float]:
        """``ppo_epochs`` passes of minibatch updates of the clipped policy and value losses."""
        cfg = self.config
        self.policy.train()
        self.value_model.train()
        totals: dict[str, float] = {"policy_loss": 0.0, "value_loss": 0.0, "clip_fraction": 0.0}
        totals |= {"approx_kl": 0.0, "value_clip_fraction": 0.0}
        updates = 0
        for _ in range(cfg.ppo_epochs):
            for idx in self._minibatches(batch.input_ids.shape[0]):
                ids, att, mask = batch.input_ids[idx], batch.attention_mask[idx], batch.response_mask[idx]
                logp = self._logprobs(self.policy, ids, att, batch.prompt_length)
                values = self._values(ids, att, batch.prompt_length)
                pg_loss, clip_frac, approx_kl = policy_loss(
                    logp, batch.logprobs[idx], batch.advantages[idx], mask, cfg.cliprange
                )
                vf_loss, vf_clip = value_loss(values, batch.values[idx], batch.returns[idx], mask, cfg.cliprange_value)
                loss = pg_loss + cfg.vf_coef * vf_loss
                self.optimizer.zero_grad()
                loss.backward()  # type: ignore[no-untyped-call]
                params = [p for group in self.optimizer.param_groups for p in group["params"]]
                torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                self.optimizer.step()
                totals["policy_loss"] += pg_loss.item()
                totals["value_loss"] += vf_loss.item()
                totals["clip_fraction"] += clip_frac.item()
                totals["approx_kl"] += approx_kl.item()
                totals["value_clip_fraction"] += vf_clip.item()
                updates += 1
        return {key: value / max(updates, 1) for key, value in totals.items()}

    def step(self, prompts: Sequence[str]) -> dict[str, float]:
        """One PPO step: a rollout on ``prompts``, its updates, the KL controller; returns the step's stats."""
        batch = self.rollout(prompts)
        kl_coef = self.kl_ctl.value
        stats = self.update(batch)
        sequence_kl = batch.kl.sum(-1).mean().item()
        self.kl_ctl.update(sequence_kl, n_steps=len(prompts))
        stats |= {
            "reward_mean": batch.scores.mean().item(),
            "reward_std": batch.scores.std().item() if len(prompts) > 1 else 0.0,
            "score_mean": batch.rm_scores.mean().item(),  # the reward model's, before the missing-EOS penalty
            "eos_rate": batch.ended.float().mean().item(),  # share of responses that ended within max_new_tokens
            "kl": sequence_kl,
            "kl_per_token": masked_mean(batch.kl, batch.response_mask).item(),
            "kl_coef": kl_coef,
            "response_length": batch.response_mask.sum(-1).float().mean().item(),
            "tokens": float(batch.attention_mask.sum().item()),  # prompt + response tokens of the rollout
        }
        return stats

    def train(self, prompts: Sequence[str], steps: int) -> list[dict[str, float]]:
        """``steps`` PPO steps on batches drawn (shuffled, seeded) from ``prompts``; per-step stats."""
        if not prompts:
            raise ValueError("no prompts")
        history: list[dict[str, float]] = []
        pool: list[str] = []
        for step in range(steps):
            batch: list[str] = []
            while len(batch) < self.config.batch_size:
                if not pool:
                    pool = list(prompts)
                    self.rng.shuffle(pool)
                batch.append(pool.pop())
            stats = self.step(batch)
            stats["step"] = float(step)
            history.append(stats)
        return history


def load_pretrained(
    config: PPOConfig,
    policy_name: str,
    reward_model_name: str,
    value_model_name: str | None = None,
    dtype: torch.dtype = torch.float32,
) -> PPOTrainer:
    """A trainer from hub names or local paths: the policy's tokenizer, a causal-LM policy, a frozen
    sequence-classification reward model (``pad_token_id`` set; it scores with its own tokenizer when its
    directory has one, else the policy's) and a separate value model loaded from ``value_model_name`` (default:
    the reward model) with ``num_labels=1``."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(policy_name)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    reward_tokenizer = tokenizer
    if (Path(reward_model_name) / "tokenizer_config.json").is_file():
        from models.reward import load_tokenizer

        reward_tokenizer = load_tokenizer(Path(reward_model_name))
    policy = AutoModelForCausalLM.from_pretrained(policy_name, dtype=dtype)
    reward_model = AutoModelForSequenceClassification.from_pretrained(reward_model_name, num_labels=1, dtype=dtype)
    value_model = AutoModelForSequenceClassification.from_pretrained(
        value_model_name or reward_model_name, num_labels=1, dtype=dtype
    )
    for model in (policy, value_model):
        if model.config.pad_token_id is None:
            model.config.pad_token_id = tokenizer.pad_token_id
    if reward_model.config.pad_token_id is None:
        reward_model.config.pad_token_id = reward_tokenizer.pad_token_id
    return PPOTrainer(
        config,
        policy,
        tokenizer,
        reward_model=reward_model,
        value_model=value_model,
        reward_tokenizer=reward_tokenizer,
    )
