"""PPO scores finished turns: a response that wrote EOS is scored as a finished chat turn (the reward model's
own template, end-of-turn included, as ``models.reward`` and ``aligngate eval``'s judge score it); a response cut
off at ``max_new_tokens`` is scored as it stands, less ``missing_eos_penalty``."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

from core.recipe import RecipeError, load_recipe
from tests.models.local.tiny import Script, build_scripted, build_tokenizer
from tests.train.ppo.support import ppo_recipe
from train.ppo import run as ppo_run
from train.ppo.config import PPOConfig
from train.ppo.trainer import PPOTrainer

pytestmark = pytest.mark.usefixtures("one_thread")


def test_missing_eos_penalty_recipe_key() -> None:
    assert PPOConfig().missing_eos_penalty == 1.0
    assert load_recipe(PPOConfig, None, ["missing_eos_penalty=0.5"]).missing_eos_penalty == 0.5
    assert load_recipe(PPOConfig, None, ["missing_eos_penalty=2"]).missing_eos_penalty == 2.0
    assert load_recipe(PPOConfig, None, ["missing_eos_penalty=null"]).missing_eos_penalty is None
    assert load_recipe(PPOConfig, None, ["missing_eos_penalty=~"]).missing_eos_penalty is None
    with pytest.raises(RecipeError, match="missing_eos_penalty"):
        load_recipe(PPOConfig, None, ["missing_eos_penalty=-1"])
    with pytest.raises(RecipeError, match="missing_eos_penalty"):
        load_recipe(PPOConfig, None, ["missing_eos_penalty=lots"])
    with pytest.raises(RecipeError, match="max_new_tokens"):
        load_recipe(PPOConfig, None, ["max_new_tokens=0"])
    # Both PPO recipes set it; the CPU recipe leaves room for about half the base policy's answers to end.
    for path in ("train/recipes/ppo.yaml", "train/recipes/ppo-7b.yaml"):
        assert load_recipe(PPOConfig, path, []).missing_eos_penalty == 1.0
        assert load_recipe(PPOConfig, path, ["missing_eos_penalty=null"]).missing_eos_penalty is None
    assert load_recipe(PPOConfig, "train/recipes/ppo.yaml", []).max_new_tokens == 128


# ---- the trainer: a scripted policy (greedy: the script, then EOS) and a tiny reward model of its own template


#: The reward model's template closes every turn with its own end-of-turn token, which the policy's lacks.
RM_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
CHATS = {"hello world": [{"role": "user", "content": "hello world"}], "fox": [{"role": "user", "content": "the fox"}]}


@dataclass
class Setup:
    tokenizer: Any
    rm_tokenizer: Any
    rm: LlamaForSequenceClassification
    script: Script
    trainer: PPOTrainer
    #: Prompt text (the policy's rendering) -> its chat messages.
    messages: dict[str, list[dict[str, str]]]


@pytest.fixture(scope="module")
def scripted(tmp_path_factory: pytest.TempPathFactory) -> Script:
    return build_scripted(tmp_path_factory.mktemp("ppo-scripted"))


@pytest.fixture
def setup(scripted: Script) -> Setup:
    tokenizer = build_tokenizer()
    rm_tokenizer = build_tokenizer()
    rm_tokenizer.add_tokens(["<|end|>"], special_tokens=True)  # a vocabulary the policy does not have
    rm_tokenizer.chat_template = RM_TEMPLATE
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(rm_tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=128,
        num_labels=1,
        pad_token_id=None,  # the trainer sets it from the reward model's tokenizer
    )
    rm = LlamaForSequenceClassification(config).eval()
    value_config = LlamaConfig(**{**config.to_dict(), "vocab_size": len(tokenizer)})
    value = LlamaForSequenceClassification(value_config)
    policy = LlamaForCausalLM.from_pretrained(str(scripted.path))
    recipe = PPOConfig(batch_size=2, mini_batch_size=2, ppo_epochs=1, lora=False, seed=0)
    trainer = PPOTrainer(recipe, policy, tokenizer, reward_model=rm, value_model=value, reward_tokenizer=rm_tokenizer)
    messages = {
        tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True): chat for chat in CHATS.values()
    }
    trainer.prompt_messages.update(messages)
    return Setup(tokenizer, rm_tokenizer, rm, scripted, trainer, messages)


def hand_score(setup: Setup, text: str) -> float:
    """The reward model's head on the last token of ``text`` alone (no batch, no padding)."""
    ids = torch.tensor([setup.rm_tokenizer(text, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        hidden = setup.rm.model(input_ids=ids).last_hidden_state[0, -1]
        return float(setup.rm.score(hidden).item())


def test_a_response_that_ends_is_scored_as_a_finished_turn_and_a_cut_one_is_penalised(setup: Setup) -> None:
    trainer, script = setup.trainer, setup.script
    prompts = list(setup.messages)
    assert prompts == ["<|user|>hello world<|assistant|>", "<|user|>the fox<|assistant|>"]  # the policy's template
    assert setup.rm.config.pad_token_id == setup.rm_tokenizer.pad_token_id  # the trainer set it
    # Room for the script and its EOS: both responses end, and are scored as finished turns in the reward model's
    # template (its <|end|> closes the answer), read at that last token; no penalty.
    trainer.config.max_new_tokens = len(script.tokens) + 3
    done = trainer.rollout(prompts, greedy=True)
    assert done.ended.tolist() == [True, True] and done.answers == [script.text, script.text]
    finished = [
        hand_score(setup, f"<|user|>hello world<|end|><|assistant|>{script.text}<|end|>"),
        hand_score(setup, f"<|user|>the fox<|end|><|assistant|>{script.text}<|end|>"),
    ]
    assert done.rm_scores.tolist() == pytest.approx(finished, abs=1e-5)
    assert torch.equal(done.scores, done.rm_scores)
    # One token: both cut off before EOS. Each is scored as it stands (the turn opened in the reward model's
    # template, then the answer so far, no end-of-turn), less missing_eos_penalty (1.0) exactly.
    trainer.config.max_new_tokens = 1
    cut = trainer.rollout(prompts, greedy=True)
    first = setup.tokenizer.decode(script.tokens[:1])
    assert cut.ended.tolist() == [False, False] and cut.answers == [first, first]
    as_is = [
        hand_score(setup, f"<|user|>hello world<|end|><|assistant|>{first}"),
        hand_score(setup, f"<|user|>the fox<|end|><|assistant|>{first}"),
    ]
    assert cut.rm_scores.tolist() == pytest.approx(as_is, abs=1e-5)
    assert torch.equal(cut.scores, cut.rm_scores - 1.0)
    # The penalty is the recipe's: 0.25, or none at all.
    trainer.config.missing_eos_penalty = 0.25
    assert torch.equal(trainer.rollout(prompts, greedy=True).scores, cut.rm_scores - 0.25)
    trainer.config.missing_eos_penalty = None
    assert torch.equal(trainer.rollout(prompts, greedy=True).scores, cut.rm_scores)
    # The penalty reaches the reward PPO optimises: the last response token carries score - kl_coef * KL.
    stats = trainer.step(prompts)
    assert stats["eos_rate"] == 0.0 and stats["score_mean"] == pytest.approx(sum(as_is) / 2, abs=1e-5)


def test_the_finished_turn_score_is_what_models_reward_gives(setup: Setup) -> None:
    from models.reward import completion_scores, scoring_item

    trainer, script = setup.trainer, setup.script
    prompts = list(setup.messages)

    def judge(answer: str) -> list[float]:  # aligngate eval's reward-model judge, as train.evaluate win-rate
        items = [scoring_item(setup.rm_tokenizer, setup.messages[p], answer) for p in prompts]
        return completion_scores(setup.rm, setup.rm_tokenizer, items)

    trainer.config.max_new_tokens = len(script.tokens) + 1
    done = trainer.rollout(prompts, greedy=True)
    assert done.ended.all()
    assert done.rm_scores.tolist() == pytest.approx(judge(script.text), abs=1e-6)
    assert trainer.turn_scores(done).tolist() == pytest.approx(judge(script.text), abs=1e-6)
    # A cut response: PPO's reward scores it as it stands; its finished-turn score is still the judge's.
    trainer.config.max_new_tokens = 2
    cut = trainer.rollout(prompts, greedy=True)
    answer = setup.tokenizer.decode(script.tokens[:2])
    assert not cut.ended.any() and cut.answers == [answer, answer]
    assert trainer.turn_scores(cut).tolist() == pytest.approx(judge(answer), abs=1e-6)
    assert trainer.turn_scores(cut).tolist() != pytest.approx(cut.rm_scores.tolist(), abs=1e-6)


def test_a_prompt_without_messages_is_scored_as_plain_text(setup: Setup) -> None:
    trainer, script = setup.trainer, setup.script
    trainer.prompt_messages.clear()
    trainer.config.max_new_tokens = len(script.tokens) + 1
    prompt = "<|user|>hello world<|assistant|>"
    batch = trainer.rollout([prompt], greedy=True)
    # No chat messages to render: the prompt text, then the answer (no end-of-turn to add).
    assert batch.ended.tolist() == [True]
    assert batch.rm_scores.tolist() == pytest.approx([hand_score(setup, prompt + script.text)], abs=1e-5)


def test_held_out_evaluation_reports_the_finished_turn_score_and_the_eos_rate(setup: Setup, tmp_path: Path) -> None:
    from models.reward import completion_scores, scoring_item

    trainer, script = setup.trainer, setup.script
    prompts = list(setup.messages)
    trainer.prompt_messages.clear()  # evaluate() hands the trainer the messages it is given
    trainer.config.max_new_tokens = len(script.tokens) + 1
    ended = ppo_run.evaluate(trainer, prompts, 2, tmp_path / "ended.jsonl", setup.messages, greedy=True)
    trainer.config.max_new_tokens = 2
    cut = ppo_run.evaluate(trainer, prompts, 1, tmp_path / "cut.jsonl", setup.messages, greedy=True)
    rows = {
        name: [json.loads(line) for line in (tmp_path / f"{name}.jsonl").read_text().splitlines()]
        for name in ("ended", "cut")
    }
    for stats, name, rate in ((ended, "ended", 1.0), (cut, "cut", 0.0)):
        assert [r["prompt"] for r in rows[name]] == list(CHATS.values())
        assert [r["ended"] for r in rows[name]] == [rate == 1.0] * 2 and stats["eval_eos_rate"] == rate
        # `score`: the sample as the reward-model judge scores it (a finished turn), whether it ended or not.
        items = [scoring_item(setup.rm_tokenizer, r["prompt"], r["response"]) for r in rows[name]]
        judged = completion_scores(setup.rm, setup.rm_tokenizer, items)
        assert [r["score"] for r in rows[name]] == pytest.approx(judged, abs=1e-6)
        assert stats["eval_score_mean"] == pytest.approx(sum(judged) / 2, abs=1e-6)
        # `reward`: what PPO maximises.
        assert stats["eval_reward_mean"] == pytest.approx(sum(r["reward"] for r in rows[name]) / 2, abs=1e-6)
    # An answer that ended: its reward is its finished-turn score. A cut one: its open turn's score less 1.0.
    assert [r["reward"] for r in rows["ended"]] == pytest.approx([r["score"] for r in rows["ended"]], abs=1e-6)
    answer = setup.tokenizer.decode(script.tokens[:2])
    as_is = [hand_score(setup, f"<|user|>{c[0]['content']}<|end|><|assistant|>{answer}") for c in CHATS.values()]
    assert [r["reward"] for r in rows["cut"]] == pytest.approx([s - 1.0 for s in as_is], abs=1e-5)


def test_held_out_scores_are_the_reward_model_judges(
    tiny_model: Path, reward_adapter: Path, prefs: Path, tmp_path: Path
) -> None:
    from gateway.eval.config import JudgeSpec
    from gateway.eval.rm_judge import RMJudge

    recipe = ppo_recipe(tiny_model, reward_adapter, prefs, tmp_path / "ppo")
    trainer, tokenizer, _ = ppo_run.build_trainer(recipe)
    _, held_out, messages = ppo_run.render_prompts(recipe, tokenizer)
    stats = ppo_run.evaluate(trainer, held_out, 4, tmp_path / "samples.jsonl", messages, seed=0)
    rows = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    judge = RMJudge("rm", JudgeSpec(reward_model=str(reward_adapter), device="cpu"))
    judged = judge._score([(r["prompt"], r["response"]) for r in rows])
    # The held-out score of each sample is the one `aligngate eval`'s reward-model judge gives its text.
    assert [r["score"] for r in rows] == pytest.approx(judged, abs=1e-5)
    assert stats["eval_score_mean"] == pytest.approx(sum(judged) / len(judged), abs=1e-5)
    assert stats["eval_eos_rate"] == sum(r["ended"] for r in rows) / len(rows)
    print(f"tiny random Llama, {recipe.max_new_tokens} new tokens: EOS rate {stats['eval_eos_rate']:.2f}")
