"""Tiny models built in the test, no hub: a byte-fallback BPE tokenizer and two small Llama models.

- ``build_random``: a 2-layer random Llama (context-dependent output; batching and cache bugs show).
- ``build_random_reward``: a 2-layer random Llama sequence classifier with one output (a reward model as
  ``models.reward`` loads it: the score at the last non-pad token), saved whole so every load scores alike.
  Its EOS and byte-token logits are pinned to 0 while the others are scaled up, so greedy runs rarely end
  early and write whole tokens (random byte tokens make invalid UTF-8, which decoders render variously).
- ``build_scripted``: a Llama whose attention and MLP are zeroed, so the next token depends only on the
  current one; its embeddings and LM head are set so that, from the script's first token, greedy decoding
  writes the script (which holds multi-byte characters made of byte-fallback tokens) and then EOS.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    LlamaForSequenceClassification,
    PreTrainedTokenizerFast,
)

CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "a correction keeps the helpful answer and removes the harmful part",
    "please repeat the following text exactly as it is written",
    "batching many requests together makes the engine faster",
    "streaming sends every piece of text as soon as it is ready",
    "hello world, this is a tiny tokenizer for tests",
]
SPECIALS = ["<unk>", "<s>", "</s>", "<pad>", "<|system|>", "<|user|>", "<|assistant|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
#: Multi-byte characters absent from the corpus: they encode as byte-fallback tokens.
SCRIPT_TEXT = "hello🎉 worldé is readyж"


def build_tokenizer() -> PreTrainedTokenizerFast:
    bpe = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    bpe.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    trainer = trainers.BpeTrainer(vocab_size=200, special_tokens=SPECIALS, show_progress=False)
    bpe.train_from_iterator(CORPUS, trainer)
    spec = json.loads(bpe.to_str())
    vocab: dict[str, int] = spec["model"]["vocab"]
    for byte in range(256):
        vocab.setdefault(f"<0x{byte:02X}>", len(vocab))
    spec["decoder"] = json.loads(
        decoders.Sequence(
            [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
        ).__getstate__()
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(spec)),
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        additional_special_tokens=SPECIALS[4:],
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def _config(tokenizer: PreTrainedTokenizerFast, layers: int) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )


def _save(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, path: Path) -> Path:
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id
    )
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def build_random(path: Path, seed: int = 0) -> Path:
    tokenizer = build_tokenizer()
    torch.manual_seed(seed)
    model = LlamaForCausalLM(_config(tokenizer, layers=2)).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(40.0)  # decisive logits: no near-ties between batched and single runs
        model.lm_head.weight[tokenizer.eos_token_id] = 0.0
        for token, index in tokenizer.get_vocab().items():
            if token.startswith("<0x"):
                model.lm_head.weight[index] = 0.0
    return _save(model, tokenizer, path)


def build_random_reward(path: Path, seed: int = 0) -> Path:
    tokenizer = build_tokenizer()
    torch.manual_seed(seed)
    config = _config(tokenizer, layers=2)
    config.num_labels = 1
    model = LlamaForSequenceClassification(config).eval()
    with torch.no_grad():
        model.score.weight.mul_(50.0)  # scores of different texts differ clearly
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@dataclass(frozen=True)
class Script:
    path: Path
    #: The prompt's last token starts the chain; the model then writes ``text`` and EOS.
    start_token: int
    text: str
    tokens: list[int]


def build_scripted(path: Path, seed: int = 0) -> Script:
    tokenizer = build_tokenizer()
    ids: list[int] = tokenizer(SCRIPT_TEXT, add_special_tokens=False)["input_ids"]
    start = tokenizer.convert_tokens_to_ids("<|assistant|>")
    chain = [start, *ids, tokenizer.eos_token_id]
    if len(set(chain)) != len(chain):
        raise AssertionError(f"the script repeats a token: {tokenizer.convert_ids_to_tokens(chain)}")
    torch.manual_seed(seed)
    model = LlamaForCausalLM(_config(tokenizer, layers=1)).eval()
    hidden = model.config.hidden_size
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        embed = torch.nn.functional.normalize(torch.randn(len(tokenizer), hidden), dim=-1)
        model.model.embed_tokens.weight.copy_(embed)
        head = torch.zeros(len(tokenizer), hidden)
        for current, following in itertools.pairwise(chain):
            head[following] = embed[current] * 10.0
        model.lm_head.weight.copy_(head)
    _save(model, tokenizer, path)
    return Script(path=path, start_token=start, text=tokenizer.decode(ids, skip_special_tokens=True), tokens=ids)
