"""PPO maths as small pure functions over tensors.

Shapes: ``B`` sequences of ``T`` response tokens. ``mask`` is 1 for a real response token and 0 for padding
(after EOS); masks are right-aligned to the response's start, i.e. valid tokens come first in each row.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

KLEstimator = Literal["k1", "k3"]


def logprobs_from_logits(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """``log softmax(logits)[..., tokens]``: the log-probability of each token, shape of ``tokens``.

    ``logits`` is ``(B, T, V)`` already aligned with ``tokens`` ``(B, T)`` (logits at t predict token t).
    """
    logp = F.log_softmax(logits.float(), dim=-1)
    return torch.gather(logp, -1, tokens.unsqueeze(-1)).squeeze(-1)


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """``sum(values * mask) / sum(mask)`` (over ``dim``, or everything); 0 where the mask is empty."""
    mask = mask.to(values.dtype)
    if dim is None:
        return (values * mask).sum() / mask.sum().clamp(min=1.0)
    return (values * mask).sum(dim) / mask.sum(dim).clamp(min=1.0)


def masked_var(values: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of the masked entries; with ``unbiased`` the Bessel correction ``n / (n - 1)``."""
    mean = masked_mean(values, mask)
    var = masked_mean((values - mean) ** 2, mask)
    if unbiased:
        n = mask.sum()
        if n > 1:
            var = var * n / (n - 1)
    return var


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """``(x - mean) / sqrt(var + eps)`` with mean and (unbiased) variance over the masked entries.

    With ``shift_mean=False`` the mean is added back: ``(x - mean) / std + mean`` (scale only).
    Masked-out entries are returned as 0.
    """
    mean = masked_mean(values, mask)
    var = masked_var(values, mask)
    whitened = (values - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask.to(values.dtype)


def kl_k1(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k1 estimator of KL(pi || ref) per sampled token: ``logp - ref_logp`` (unbiased, can be negative)."""
    return logp - ref_logp


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k3 estimator (Schulman): with ``r = ref_logp - logp``, ``exp(r) - r - 1`` (unbiased, always >= 0)."""
    r = ref_logp - logp
    return torch.exp(r) - r - 1.0


def kl_per_token(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: KLEstimator) -> torch.Tensor:
    """The chosen estimator, ``k1`` or ``k3``."""
    if estimator == "k1":
        return kl_k1(logp, ref_logp)
    if estimator == "k3":
        return kl_k3(logp, ref_logp)
    raise ValueError(f"unknown KL estimator {estimator!r}; use 'k1' or 'k3'")


def last_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last 1 in each row of a right-padded mask ``(B, T)`` (0 for an empty row)."""
    positions = torch.arange(mask.shape[-1], device=mask.device).expand_as(mask)
    return torch.where(mask.bool(), positions, torch.zeros_like(positions)).max(dim=-1).values


def per_token_rewards(
    score: torch.Tensor,
    logp: torch.Tensor,
    ref_logp: torch.Tensor,
    mask: torch.Tensor,
    kl_coef: float,
    estimator: KLEstimator = "k1",
) -> tuple[torch.Tensor, torch.Tensor]:
    """``r_t = -kl_coef * KL_t`` on every valid token, plus ``score`` at the last valid token.

    Returns ``(rewards, kl)``, both ``(B, T)`` and zero where ``mask`` is 0.
    """
    m = mask.to(logp.dtype)
    kl = kl_per_token(logp, ref_logp, estimator) * m
    rewards = -kl_coef * kl
    last = last_index(mask)
    rows = torch.arange(rewards.shape[0], device=rewards.device)
    rewards[rows, last] += score.to(rewards.dtype) * (m.sum(-1) > 0).to(rewards.dtype)
    return rewards, kl


def apply_missing_eos_penalty(scores: torch.Tensor, ended: torch.Tensor, penalty: float | None) -> torch.Tensor:
    """``scores`` with ``penalty`` subtracted where ``ended`` is false (a response cut off before EOS), as TRL's
    ``missing_eos_penalty``: ``scores[~ended] -= penalty``. ``None`` leaves the scores as they are. A new tensor."""
    if penalty is None:
        return scores.clone()
    return scores - penalty * (~ended.bool()).to(scores.dtype)


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation; returns ``(advantages, returns)``.

    ``delta_t = r_t + gamma * V_{t+1} * m_{t+1} - V_t`` and ``A_t = delta_t + gamma * lam * m_{t+1} * A_{t+1}``
    (the episode ends after the last valid token, so ``V`` and ``A`` beyond it are 0); ``returns = A + V``.
    """
    m = mask.to(values.dtype)
    values = values * m
    rewards = rewards * m
    length = rewards.shape[-1]
    advantages = torch.zeros_like(rewards)
    next_adv = torch.zeros_like(rewards[:, 0])
    next_value = torch.zeros_like(values[:, 0])
    next_mask = torch.zeros_like(m[:, 0])
    for t in reversed(range(length)):
        delta = rewards[:, t] + gamma * next_value * next_mask - values[:, t]
        next_adv = delta + gamma * lam * next_mask * next_adv
        advantages[:, t] = next_adv
        next_value, next_mask = values[:, t], m[:, t]
    advantages = advantages * m
    return advantages, (advantages + values) * m


def policy_loss(
    logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, clip: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Clipped surrogate: ``mean(max(-A * ratio, -A * clamp(ratio, 1 - clip, 1 + clip)))``.

    ``ratio = exp(logp - old_logp)``. Returns ``(loss, clip_fraction, approx_kl)``, where ``clip_fraction`` is
    the share of tokens where the clipped term was chosen (strictly larger) and
    ``approx_kl = mean(0.5 * (logp - old_logp)^2)``; all masked means.
    """
    log_ratio = logp - old_logp
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip, 1.0 + clip)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        clip_fraction = masked_mean((clipped > unclipped).to(logp.dtype), mask)
        approx_kl = masked_mean(0.5 * log_ratio**2, mask)
    return loss, clip_fraction, approx_kl


def value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, clip: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped value loss: ``0.5 * mean(max((V - R)^2, (V_clip - R)^2))``.

    ``V_clip = old_V + clamp(V - old_V, -clip, clip)``. Returns ``(loss, clip_fraction)``.
    """
    clipped_values = old_values + torch.clamp(values - old_values, -clip, clip)
    loss_unclipped = (values - returns) ** 2
    loss_clipped = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(loss_unclipped, loss_clipped), mask)
    with torch.no_grad():
        clip_fraction = masked_mean((loss_clipped > loss_unclipped).to(values.dtype), mask)
    return loss, clip_fraction


class FixedKLController:
    """A constant KL coefficient; ``update`` does nothing."""

    def __init__(self, kl_coef: float) -> None:
        self.value = kl_coef

    def update(self, current_kl: float, n_steps: int) -> None:
        """No-op, for interface parity with :class:`AdaptiveKLController`."""


class AdaptiveKLController:
    """Ziegler et al. (2019) adaptive KL coefficient.

    ``err = clip(current_kl / target - 1, -0.2, 0.2)``; ``coef *= 1 + err * n_steps / horizon``.
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: float) -> None:
        if target <= 0 or horizon <= 0:
            raise ValueError("target and horizon must be positive")
        self.value = init_kl_coef
        self.target = target
        self.horizon = horizon

    def update(self, current_kl: float, n_steps: int) -> None:
        """Move the coefficient towards the KL target after ``n_steps`` samples."""
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon


def score_at_last_token(reward_model_outputs: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The reward model's output at each sequence's last non-pad token.

    ``reward_model_outputs`` is ``(B, T)`` or ``(B, T, 1)`` per-position scores. Works for right padding
    (last 1 of the mask) and left padding (then the last position, which is also the last 1 of the mask):
    the index used is that of the last 1 in ``attention_mask``, whichever side is padded. Returns ``(B,)``.
    """
    if reward_model_outputs.dim() == 3:
        reward_model_outputs = reward_model_outputs.squeeze(-1)
    last = last_index(attention_mask)
    rows = torch.arange(reward_model_outputs.shape[0], device=reward_model_outputs.device)
    return reward_model_outputs[rows, last]
