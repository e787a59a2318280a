"""PPO maths against hand-computed values (the arithmetic is in the comments)."""

from __future__ import annotations

import math

import pytest
import torch

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
from train.ppo.trainer import ended_with_eos, response_mask_from


def t(*rows: list[float]) -> torch.Tensor:
    return torch.tensor(list(rows), dtype=torch.float64)


def close(actual: torch.Tensor, expected: torch.Tensor | float) -> None:
    torch.testing.assert_close(actual, torch.as_tensor(expected, dtype=actual.dtype), rtol=1e-6, atol=1e-9)


def test_logprobs_from_logits() -> None:
    # logits (0, ln 3) -> softmax (1/4, 3/4): token 1 -> ln 0.75, token 0 -> ln 0.25
    logits = torch.tensor([[[0.0, math.log(3.0)], [0.0, math.log(3.0)]]])
    out = logprobs_from_logits(logits, torch.tensor([[1, 0]]))
    torch.testing.assert_close(out, torch.tensor([[math.log(0.75), math.log(0.25)]]))


def test_masked_mean() -> None:
    # (1 + 3) / 2 = 2; per row: row 0 -> 1, row 1 -> (3 + 4) / 2 = 3.5
    close(masked_mean(t([1, 2, 3, 4]), t([1, 0, 1, 0])), 2.0)
    close(masked_mean(t([1, 2], [3, 4]), t([1, 0], [1, 1]), dim=1), t([1.0, 3.5]).squeeze(0))


def test_masked_whiten_hand_values() -> None:
    # masked entries 1, 2, 3: mean 2, unbiased var ((-1)^2 + 0 + 1^2) / (3 - 1) = 1 -> (-1, 0, 1); pad -> 0
    values, mask = t([1, 2, 3, 100]), t([1, 1, 1, 0])
    close(masked_whiten(values, mask, eps=0.0), t([-1, 0, 1, 0]))
    # shift_mean=False adds the mean back: (x - 2) / 1 + 2 = x
    close(masked_whiten(values, mask, shift_mean=False, eps=0.0), t([1, 2, 3, 0]))


def test_masked_whiten_mean_zero_std_one_under_mask() -> None:
    torch.manual_seed(0)
    values = torch.randn(4, 7, dtype=torch.float64) * 5 + 3
    mask = (torch.rand(4, 7) > 0.3).double()
    white = masked_whiten(values, mask)
    picked = white[mask.bool()]
    close(picked.mean(), 0.0)
    torch.testing.assert_close(picked.std(), torch.tensor(1.0, dtype=torch.float64), rtol=1e-6, atol=1e-6)
    assert torch.all(white[~mask.bool()] == 0)


def test_kl_estimators_on_known_numbers() -> None:
    # p = 0.5, ref = 0.25: k1 = ln 0.5 - ln 0.25 = ln 2 = 0.693147
    # r = ln(ref / p) = -ln 2: k3 = e^r - r - 1 = 0.5 + 0.693147 - 1 = 0.193147
    logp, ref = t([math.log(0.5)]), t([math.log(0.25)])
    close(kl_k1(logp, ref), t([math.log(2.0)]))
    close(kl_k3(logp, ref), t([0.5 + math.log(2.0) - 1.0]))
    # equal distributions: both 0; k3 is never negative while k1 can be
    close(kl_k3(ref, ref), t([0.0]))
    assert kl_k1(ref, logp).item() < 0 < kl_k3(ref, logp).item()


def test_per_token_rewards_k1_and_score_at_last_valid_token() -> None:
    # k1 = logp - ref = (0.5, 0, [masked]) ; kl_coef 0.1 -> -0.05, 0 ; score 2 lands on token 1 (last valid)
    logp, ref = t([-1.0, -2.0, -0.5, 0.0]), t([-1.5, -2.0, -1.0, 0.0])
    mask = t([1, 1, 0, 0])
    rewards, kl = per_token_rewards(
        torch.tensor([2.0], dtype=torch.float64), logp, ref, mask, kl_coef=0.1, estimator="k1"
    )
    close(kl, t([0.5, 0.0, 0.0, 0.0]))
    close(rewards, t([-0.05, 2.0, 0.0, 0.0]))


def test_per_token_rewards_k3() -> None:
    # k3 at token 0: r = -1.5 - (-1) = -0.5 -> e^-0.5 + 0.5 - 1 = 0.106531; kl_coef 1 -> -0.106531 + score 1
    logp, ref, mask = t([-1.0]), t([-1.5]), t([1])
    rewards, kl = per_token_rewards(torch.tensor([1.0], dtype=torch.float64), logp, ref, mask, 1.0, "k3")
    close(kl, t([math.exp(-0.5) - 0.5]))
    close(rewards, t([1.0 - (math.exp(-0.5) - 0.5)]))
    with pytest.raises(ValueError):
        per_token_rewards(torch.tensor([1.0]), logp, ref, mask, 1.0, "k2")  # type: ignore[arg-type]


def test_gae_gamma_1_lambda_1_is_reward_to_go_minus_value() -> None:
    # rewards (0, 0, 1), values (0.5, 0.6, 0.7), gamma = lam = 1
    # t=2: delta = 1 + 0 - 0.7 = 0.3            A2 = 0.3
    # t=1: delta = 0 + 0.7 - 0.6 = 0.1          A1 = 0.1 + 0.3 = 0.4
    # t=0: delta = 0 + 0.6 - 0.5 = 0.1          A0 = 0.1 + 0.4 = 0.5
    # returns = A + V = (1, 1, 1) = the reward-to-go
    adv, ret = gae(t([0, 0, 1]), t([0.5, 0.6, 0.7]), t([1, 1, 1]), gamma=1.0, lam=1.0)
    close(adv, t([0.5, 0.4, 0.3]))
    close(ret, t([1.0, 1.0, 1.0]))


def test_gae_gamma_09_lambda_095_with_padding() -> None:
    # rewards (1, 0, 2 | pad 5), values (0.5, 1.0, 1.5 | pad 9): the pad is ignored, the episode ends at t=2
    # gamma * lam = 0.855
    # t=2: delta = 2 - 1.5 = 0.5                             A2 = 0.5
    # t=1: delta = 0 + 0.9 * 1.5 - 1.0 = 0.35                A1 = 0.35 + 0.855 * 0.5 = 0.7775
    # t=0: delta = 1 + 0.9 * 1.0 - 0.5 = 1.4                 A0 = 1.4 + 0.855 * 0.7775 = 2.0647625
    # returns = A + V = (2.5647625, 1.7775, 2.0, 0)
    adv, ret = gae(t([1, 0, 2, 5]), t([0.5, 1.0, 1.5, 9.0]), t([1, 1, 1, 0]), gamma=0.9, lam=0.95)
    close(adv, t([2.0647625, 0.7775, 0.5, 0.0]))
    close(ret, t([2.5647625, 1.7775, 2.0, 0.0]))


def test_policy_loss_clips_when_ratio_exceeds_bounds() -> None:
    # clip 0.2, three tokens (third masked):
    #  ratio 1.5, A=+1: unclipped -1.5, clipped -1.2 -> max -1.2 (clipped)
    #  ratio 0.5, A=+1: unclipped -0.5, clipped -0.8 -> max -0.5 (not clipped)
    # loss = (-1.2 - 0.5) / 2 = -0.85 ; clip fraction 1/2 ; approx_kl = 0.5 * (ln 1.5^2 + ln 0.5^2) / 2
    logp = t([math.log(1.5), math.log(0.5), 5.0])
    old = t([0.0, 0.0, 0.0])
    adv, mask = t([1.0, 1.0, 100.0]), t([1, 1, 0])
    loss, clip_frac, approx_kl = policy_loss(logp, old, adv, mask, clip=0.2)
    close(loss, -0.85)
    close(clip_frac, 0.5)
    close(approx_kl, 0.25 * (math.log(1.5) ** 2 + math.log(0.5) ** 2))
    # a negative advantage with ratio 0.5: unclipped 0.5, clipped 0.8 -> 0.8 (clipped)
    loss, clip_frac, _ = policy_loss(t([math.log(0.5)]), t([0.0]), t([-1.0]), t([1]), clip=0.2)
    close(loss, 0.8)
    close(clip_frac, 1.0)


def test_policy_loss_gradient_is_zero_when_clipped() -> None:
    logp = torch.tensor([[math.log(1.5)]], requires_grad=True)
    loss, _, _ = policy_loss(logp, torch.zeros(1, 1), torch.ones(1, 1), torch.ones(1, 1), clip=0.2)
    loss.backward()
    assert logp.grad is not None and logp.grad.abs().item() == 0.0


def test_value_loss_clipped() -> None:
    # clip 0.2:
    #  V=2.0, old=1.0, R=3: V_clip = 1.2; (2-3)^2 = 1, (1.2-3)^2 = 3.24 -> 3.24 (clipped)
    #  V=1.1, old=1.0, R=3: V_clip = 1.1; both 1.9^2 = 3.61 -> 3.61 (not clipped)
    # loss = 0.5 * (3.24 + 3.61) / 2 = 1.7125 ; clip fraction 1/2
    loss, clip_frac = value_loss(t([2.0, 1.1, 50.0]), t([1.0, 1.0, 0.0]), t([3.0, 3.0, 0.0]), t([1, 1, 0]), 0.2)
    close(loss, 1.7125)
    close(clip_frac, 0.5)


def test_adaptive_kl_controller() -> None:
    # coef 0.2, target 6, horizon 10000, n_steps 256:
    #  kl 12  -> err = 12/6 - 1 = 1 -> clipped 0.2   -> 0.2 * (1 + 0.2 * 256 / 10000) = 0.201024
    #  kl 3   -> err = -0.5 -> clipped -0.2           -> 0.2 * (1 - 0.00512) = 0.198976
    #  kl 6.6 -> err = 0.1 (inside the clip), n=100  -> 0.2 * (1 + 0.1 * 100 / 10000) = 0.2002
    for kl, n, expected in [(12.0, 256, 0.201024), (3.0, 256, 0.198976), (6.6, 100, 0.2002)]:
        ctl = AdaptiveKLController(0.2, target=6.0, horizon=10000)
        ctl.update(kl, n)
        assert ctl.value == pytest.approx(expected, rel=1e-12)
    fixed = FixedKLController(0.3)
    fixed.update(100.0, 256)
    assert fixed.value == 0.3


def test_score_at_last_token_right_and_left_padding() -> None:
    outputs = t([1, 2, 3, 4], [5, 6, 7, 8])
    # right padding: last 1 at index 1 -> 2 ; full row -> 8
    close(score_at_last_token(outputs, torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])), t([2.0, 8.0]).squeeze(0))
    # left padding: the last token is the last position -> 4, 8 ; a (B, T, 1) head output works too
    close(score_at_last_token(outputs.unsqueeze(-1), torch.tensor([[0, 1, 1, 1], [0, 0, 1, 1]])), t([4.0, 8.0])[0])
    # left-padded prompt + right-padded response: index of the last 1 -> 3 (value 4) and 2 (value 7)
    close(score_at_last_token(outputs, torch.tensor([[0, 1, 1, 1], [1, 1, 1, 0]])), t([4.0, 7.0])[0])


def test_response_mask_keeps_the_first_eos() -> None:
    # eos = 2: tokens before it and the EOS itself count, everything after is padding
    tokens = torch.tensor([[5, 2, 3, 3], [5, 6, 7, 8], [2, 2, 4, 4]])
    expected = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]])
    assert torch.equal(response_mask_from(tokens, eos_token_id=2), expected)


def test_missing_eos_penalty_is_subtracted_from_cut_responses_only() -> None:
    scores, ended = t([0.5, -0.25, 2.0, 0.0])[0], torch.tensor([True, False, False, True])
    # TRL's scores[~ended] -= penalty: rows 1 and 2 were cut -> -0.25 - 1.5 = -1.75, 2.0 - 1.5 = 0.5
    close(apply_missing_eos_penalty(scores, ended, 1.5), t([0.5, -1.75, 0.5, 0.0])[0])
    close(apply_missing_eos_penalty(scores, ended, None), scores)  # null: no penalty
    close(apply_missing_eos_penalty(scores, ended, 0.0), scores)
    close(scores, t([0.5, -0.25, 2.0, 0.0])[0])  # a new tensor: the scores given are left as they were


def test_ended_with_eos_whatever_the_padding() -> None:
    eos, pad = 2, 0
    # ended at t=1 then padded; cut (no EOS); ended on the last token; padded with EOS itself (pad == eos)
    tokens = torch.tensor([[5, eos, pad, pad], [5, 6, 7, 8], [5, 6, 7, eos], [5, eos, eos, eos]])
    assert ended_with_eos(tokens, eos).tolist() == [True, False, True, True]
    assert ended_with_eos(tokens, None).tolist() == [False] * 4  # no EOS token: nothing can end
