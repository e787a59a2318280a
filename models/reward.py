"""Reward models: loading what ``aligngate train rm`` writes, and scoring (prompt, completion) pairs with it.

Shared by the trainers (``train.rm``, ``train.evaluate``, PPO) and ``aligngate eval``'s reward-model judge, so
a reward model scores the same text the same way wherever it is used. torch, transformers and peft are
imported inside the functions: importing this module costs nothing.

* :func:`load_reward_model` — ``path`` is an adapter directory (``adapter_config.json``: the base it names, or
  the ``base`` of the ``aligngate-train.json`` beside it, is loaded as a one-output sequence classifier, then
  the adapter and its trained score head are applied and merged), a full HF directory, a GGUF file or
  ``builtin:NAME`` (a fresh, untrained head). The tokenizer gets a pad token (its end-of-sequence token when it
  has none) and the model config the same ``pad_token_id``: the score is read at the last non-pad token.
* :func:`render` — the text a (prompt, completion) pair is scored as: a plain prompt string followed by the
  completion, or, for chat messages, the tokenizer's chat template over the prompt messages plus the assistant
  message — a *finished* assistant turn, end-of-turn token included.
* :func:`completion_scores` — one score per pair, ``batch_size`` sequences per forward pass, right-padded and cut
  at ``max_length`` tokens; :func:`token_length` the length that cut applies to.
* :func:`scoring_item` — the pair for an answer to chat messages: the messages and one assistant message, or
  plain text when the tokenizer has no chat template and the prompt is a single user message.
  :func:`open_turn_item` the pair for an answer cut off before its end of turn: the prompt messages rendered
  with the generation prompt (the assistant turn opened, as a chat model sees it while writing), then the answer
  as plain text — an unfinished turn, no end-of-turn token.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "RewardModelError",
    "classifier",
    "completion_scores",
    "load_reward_model",
    "load_tokenizer",
    "open_turn_item",
    "render",
    "scoring_item",
    "token_length",
]

logger = logging.getLogger(__name__)


class RewardModelError(ValueError):
    """The reward model cannot be loaded or cannot render a prompt; the message says why."""


def load_tokenizer(path: Path) -> Any:
    """The tokenizer of an HF directory, with a pad token (its end-of-sequence token when it has none)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def classifier(path: Path, dtype: Any, tokenizer_dir: Path | None = None) -> tuple[Any, Any]:
    """A one-output sequence classifier from an HF directory and its tokenizer, ``pad_token_id`` set on both."""
    from transformers import AutoModelForSequenceClassification

    tokenizer = load_tokenizer(tokenizer_dir or path)
    model = AutoModelForSequenceClassification.from_pretrained(str(path), num_labels=1, dtype=dtype)
    model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def load_reward_model(path: str | Path, dtype: Any = None, cache_dir: str | None = None) -> tuple[Any, Any]:
    """(reward model in eval mode, tokenizer) from ``path`` (see the module docstring)."""
    from models.local.source import resolve_source

    adapter = Path(path) if not str(path).startswith("builtin:") else None
    if adapter is not None and (adapter / "adapter_config.json").is_file():
        from peft import PeftModel

        base = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8"))["base_model_name_or_path"]
        if not base or not Path(base).exists():
            written = adapter.parent / "aligngate-train.json"
            if not written.is_file():
                raise RewardModelError(f"{adapter}: cannot find the base model of this adapter")
            base = json.loads(written.read_text(encoding="utf-8"))["base"]
        own_tokenizer = (adapter / "tokenizer_config.json").is_file()
        model, tokenizer = classifier(Path(base), dtype, adapter if own_tokenizer else None)
        model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
        model.config.pad_token_id = tokenizer.pad_token_id
    else:
        model, tokenizer = classifier(resolve_source(str(path), cache_dir=cache_dir).path, dtype)
    model.eval()
    return model, tokenizer


def load_on_device(path: str | Path, device: str = "auto", dtype: str = "auto") -> tuple[Any, Any]:
    """:func:`load_reward_model` placed on ``device`` (``auto``: CUDA when torch sees one, else the CPU); ``dtype``
    ``auto`` is bf16 on CUDA and fp32 on the CPU (or ``bf16``, ``fp32``). :class:`RewardModelError` for CUDA asked for
    but missing."""
    import torch

    cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if cuda and not torch.cuda.is_available():
        raise RewardModelError("device cuda asked for, but torch sees no CUDA device")
    wanted = torch.bfloat16 if dtype == "bf16" or (dtype == "auto" and cuda) else torch.float32
    model, tokenizer = load_reward_model(path, dtype=wanted)
    return (model.to("cuda") if cuda else model), tokenizer


def render(tokenizer: Any, prompt: Any, completion: Any) -> str:
    """The text ``(prompt, completion)`` is scored as (TRL's standard or conversational format)."""
    if isinstance(prompt, str):
        return prompt + (completion if isinstance(completion, str) else completion[0]["content"])
    text: str = tokenizer.apply_chat_template(list(prompt) + list(completion), tokenize=False)
    return text


def token_length(tokenizer: Any, prompt: Any, completion: Any) -> int:
    """Tokens of :func:`render`'s text (what ``max_length`` cuts)."""
    return len(tokenizer(render(tokenizer, prompt, completion), add_special_tokens=False)["input_ids"])


def scoring_item(tokenizer: Any, messages: Sequence[dict[str, str]], answer: str) -> tuple[Any, Any]:
    """``(prompt, completion)`` of ``answer`` to chat ``messages`` (see the module docstring)."""
    prompt = [dict(m) for m in messages]
    if getattr(tokenizer, "chat_template", None) is None:
        if len(prompt) == 1 and prompt[0]["role"] == "user":
            return prompt[0]["content"], answer
        raise RewardModelError("the reward model's tokenizer has no chat template, so a chat prompt cannot be rendered")
    return prompt, [{"role": "assistant", "content": answer}]


def open_turn_item(tokenizer: Any, messages: Sequence[dict[str, str]], answer: str) -> tuple[Any, Any]:
    """``(prompt, completion)`` of ``answer`` cut off mid-turn (see the module docstring): plain text, so that
    :func:`render` gives the prompt's template with the generation prompt followed by the answer."""
    if getattr(tokenizer, "chat_template", None) is None:
        return scoring_item(tokenizer, messages, answer)
    opened: str = tokenizer.apply_chat_template([dict(m) for m in messages], tokenize=False, add_generation_prompt=True)
    return opened, answer


def completion_scores(
    model: Any, tokenizer: Any, items: Sequence[tuple[Any, Any]], max_length: int = 512, batch_size: int = 8
) -> list[float]:
    """The reward model's score of each ``(prompt, completion)``, ``batch_size`` sequences per forward pass,
    right-padded and cut at ``max_length`` tokens."""
    import torch

    items = list(items)
    model.eval()
    device = next(model.parameters()).device
    scores: list[float] = []
    side = tokenizer.padding_side
    tokenizer.padding_side = "right"
    try:
        for start in range(0, len(items), batch_size):
            texts = [render(tokenizer, prompt, completion) for prompt, completion in items[start : start + batch_size]]
            enc = tokenizer(texts, return_tensors="pt", padding=True, truncation=True, max_length=max_length)
            with torch.no_grad():
                batch = model(**{k: v.to(device) for k, v in enc.items()}).logits[:, 0].float()
            scores += [float(x) for x in batch.tolist()]
    finally:
        tokenizer.padding_side = side
    return scores
