"""A toy PPO run whose reward rises, and the LoRA / reward-model wiring of the trainer (tiny local models)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

from tests.models.local.tiny import build_tokenizer
from train.ppo.config import PPOConfig
from train.ppo.trainer import PPOTrainer, load_pretrained

pytestmark = pytest.mark.usefixtures("one_thread")
PROMPTS = ["the quick brown fox", "hello world", "please repeat the text", "a correction keeps"]


def _config(tokenizer: object, num_labels: int = 2) -> LlamaConfig:
    tok = tokenizer
    return LlamaConfig(
        vocab_size=len(tok),  # type: ignore[arg-type]
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=64,
        bos_token_id=tok.bos_token_id,  # type: ignore[attr-defined]
        eos_token_id=tok.eos_token_id,  # type: ignore[attr-defined]
        pad_token_id=tok.pad_token_id,  # type: ignore[attr-defined]
        tie_word_embeddings=False,
        num_labels=num_labels,
    )


def _models(seed: int = 0) -> tuple[object, LlamaForCausalLM, LlamaForSequenceClassification]:
    tokenizer = build_tokenizer()
    torch.manual_seed(seed)
    policy = LlamaForCausalLM(_config(tokenizer))
    value = LlamaForSequenceClassification(_config(tokenizer, num_labels=1))
    return tokenizer, policy, value


def test_toy_ppo_reward_rises_with_bounded_kl() -> None:
    torch.manual_seed(0)
    tokenizer, policy, value = _models()
    # The reward: +1 per response token whose id is a multiple of 8 (about 1/8 of the vocabulary; EOS
    # and padding after it do not count). A random policy scores about 8 tokens / 8 = 1.
    target = torch.arange(len(tokenizer)) % 8 == 0  # type: ignore[arg-type]

    def reward_fn(prompt_ids: torch.Tensor, response_ids: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
        return (target[response_ids] & response_mask.bool()).float().sum(-1)

    config = PPOConfig(
        batch_size=16,
        mini_batch_size=8,
        ppo_epochs=2,
        learning_rate=5e-3,
        max_new_tokens=8,
        init_kl_coef=0.05,
        target_kl=6.0,
        kl_horizon=1000,
        seed=0,
        lora=False,
        missing_eos_penalty=None,  # the token-count reward alone (the penalty has tests of its own)
    )
    trainer = PPOTrainer(config, policy, tokenizer, reward_fn=reward_fn, value_model=value)
    start = time.perf_counter()
    history = trainer.train(PROMPTS, steps=40)
    elapsed = time.perf_counter() - start

    rewards = [s["reward_mean"] for s in history]
    first, last = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    print(f"reward first5={first:.3f} last5={last:.3f}; kl last={history[-1]['kl']:.3f}; {elapsed:.1f}s")
    assert len(history) == 40
    assert {"reward_mean", "kl", "kl_coef", "clip_fraction", "policy_loss", "value_loss"} <= history[0].keys()
    # seen: first5 ~1.1, last5 ~7.8 (of 8 possible); KL (k1, nats per sequence) plateaus around 25
    assert last > first + 4.0, rewards
    assert all(0.0 <= s["kl"] < 40.0 for s in history[-5:]), [s["kl"] for s in history]
    # the adaptive controller first lowered the coefficient (KL under target), then raised it (KL over target)
    coefs = [s["kl_coef"] for s in history]
    assert min(coefs) < config.init_kl_coef and coefs[-1] > min(coefs)
    assert history[0]["kl"] < 1e-4  # the first rollout is sampled from the reference itself


@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")
def test_lora_reference_is_the_disabled_adapter_and_value_model_starts_from_the_rm() -> None:
    tokenizer, policy, _ = _models(seed=1)
    rm_config = _config(tokenizer, num_labels=1)
    rm_config.pad_token_id = None  # the trainer must set it
    rm = LlamaForSequenceClassification(rm_config)
    config = PPOConfig(
        batch_size=4,
        mini_batch_size=2,
        ppo_epochs=1,
        learning_rate=1e-2,
        max_new_tokens=4,
        lora_r=4,
        lora_alpha=16,
        lora_dropout=0.0,
        lora_target_modules=["q_proj", "v_proj"],
    )
    trainer = PPOTrainer(config, policy, tokenizer, reward_model=rm)

    assert trainer.ref_model is None  # no frozen copy: the base model with its adapter off
    assert rm.config.pad_token_id == tokenizer.pad_token_id  # type: ignore[attr-defined]
    assert trainer.value_model is not rm
    torch.testing.assert_close(trainer.value_model.score.weight, rm.score.weight)  # type: ignore[union-attr]
    assert not any(p.requires_grad for p in rm.parameters())

    batch = trainer.rollout(PROMPTS)
    assert batch.kl.abs().max().item() < 1e-5  # LoRA B starts at 0: policy == reference
    trainer.update(batch)
    after = trainer.rollout(PROMPTS)
    # the adapter moved, the base (= reference) did not: a non-zero KL now, rm untouched
    assert after.kl.abs().max().item() > 1e-6
    base_weights = [p for n, p in trainer.policy.named_parameters() if "lora_" not in n]
    assert not any(p.requires_grad for p in base_weights)
    assert torch.isfinite(after.scores).all()


def test_load_pretrained_from_local_dirs(tmp_path: Path) -> None:
    tokenizer, policy, _ = _models(seed=2)
    rm = LlamaForSequenceClassification(_config(tokenizer, num_labels=1))
    policy.save_pretrained(tmp_path / "policy")
    tokenizer.save_pretrained(tmp_path / "policy")  # type: ignore[attr-defined]
    rm.save_pretrained(tmp_path / "rm")
    config = PPOConfig(
        batch_size=2, mini_batch_size=2, ppo_epochs=1, max_new_tokens=3, learning_rate=1.4e-5, lora=False
    )
    trainer = load_pretrained(config, str(tmp_path / "policy"), str(tmp_path / "rm"))
    assert trainer.value_model is not trainer.reward_model
    stats = trainer.step(PROMPTS[:2])
    assert {"reward_mean", "kl", "clip_fraction"} <= stats.keys()
