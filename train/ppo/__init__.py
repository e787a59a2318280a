"""PPO for language models, our own (TRL removed its PPO trainer).

``core`` holds small pure tensor functions (log-probs, KL estimators, GAE, whitening, clipped losses, KL
controllers); ``trainer`` wires them into a rollout / update loop over a policy, a value model and a reward.
"""

from train.ppo.core import (
    AdaptiveKLController,
    FixedKLController,
    apply_missing_eos_penalty,
    gae,
    kl_k1,
    kl_k3,
    logprobs_from_logits,
    masked_mean,
    masked_whiten,
    per_token_rewards,
    policy_loss,
    score_at_last_token,
    value_loss,
)

__all__ = [
    "AdaptiveKLController",
    "FixedKLController",
    "apply_missing_eos_penalty",
    "gae",
    "kl_k1",
    "kl_k3",
    "logprobs_from_logits",
    "masked_mean",
    "masked_whiten",
    "per_token_rewards",
    "policy_loss",
    "score_at_last_token",
    "value_loss",
]
