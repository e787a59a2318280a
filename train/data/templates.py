"""The helper prompt templates, character for character as the published checkpoints expect (see DESIGN.md).

Text templates (``bpo``, ``aligner-v1``, ``aligner-v2``) render to one string: the prompt of a TRL *standard*
prompt-completion row. Chat templates (``bpo-chat``, ``aligner-chat``) are for helpers built on a chat model
(the embedded default): the same instruction as one user message, and the chat model's own template is applied
by TRL/the tokenizer. The gateway must render requests to its helpers with these same strings.

``completion_prefix`` is what goes between the rendered prompt and the target text in a text SFT row. BPO was
trained on Llama-2-chat's ``[INST] ... [/INST] answer`` layout, hence one space; Aligner (safe-rlhf layout)
concatenates ``ASSISTANT:`` and the answer directly. Consumers strip the generated text either way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from train.data.formats import Message, user

__all__ = [
    "ALIGNER_CHAT_INSTRUCTION",
    "ALIGNER_TEMPLATES",
    "ALIGNER_V1_TEMPLATE",
    "ALIGNER_V2_TEMPLATE",
    "BPO_CHAT_INSTRUCTION",
    "BPO_TEMPLATE",
    "REWRITER_TEMPLATES",
    "Template",
    "render_aligner_prompt",
    "render_rewriter_prompt",
]

BPO_TEMPLATE = (
    "[INST] You are an expert prompt engineer. Please help me improve this prompt to get a more helpful and "
    "harmless response:\n{prompt} [/INST]"
)
ALIGNER_V1_TEMPLATE = (
    "BEGINNING OF CONVERSATION: USER: Edit the following Question-Answer pair to make it more helpful and "
    "harmless: {question} | {answer} ASSISTANT:"
)
ALIGNER_V2_TEMPLATE = (
    "BEGINNING OF CONVERSATION: USER: ##Question: {question}\n##Answer: {answer}\n##Correction:  ASSISTANT:"
)
# The instructions alone, for chat-model helpers (a single user message).
BPO_CHAT_INSTRUCTION = (
    "You are an expert prompt engineer. Please help me improve this prompt to get a more helpful and harmless "
    "response:\n{prompt}"
)
ALIGNER_CHAT_INSTRUCTION = (
    "Edit the following Question-Answer pair to make it more helpful and harmless: {question} | {answer}"
)


@dataclass(frozen=True)
class Template:
    """A helper prompt template: a text template, or a chat instruction sent as one user message."""

    name: str
    text: str
    style: Literal["text", "chat"]
    completion_prefix: str = ""


ALIGNER_TEMPLATES: dict[str, Template] = {
    "aligner-v1": Template("aligner-v1", ALIGNER_V1_TEMPLATE, "text"),
    "aligner-v2": Template("aligner-v2", ALIGNER_V2_TEMPLATE, "text"),
    "aligner-chat": Template("aligner-chat", ALIGNER_CHAT_INSTRUCTION, "chat"),
}
REWRITER_TEMPLATES: dict[str, Template] = {
    "bpo": Template("bpo", BPO_TEMPLATE, "text", completion_prefix=" "),
    "bpo-chat": Template("bpo-chat", BPO_CHAT_INSTRUCTION, "chat"),
}


def _lookup(templates: dict[str, Template], name: str, what: str) -> Template:
    try:
        return templates[name]
    except KeyError:
        raise ValueError(f"unknown {what} template {name!r}; expected one of {', '.join(templates)}") from None


def render_aligner_prompt(template: str, question: str, answer: str) -> str | list[Message]:
    """The Aligner input for ``(question, answer)``: a string (text templates) or one user message (chat)."""
    t = _lookup(ALIGNER_TEMPLATES, template, "aligner")
    # str.format only parses the template, so braces inside question/answer are inserted literally.
    text = t.text.format(question=question, answer=answer)
    return text if t.style == "text" else [user(text)]


def render_rewriter_prompt(template: str, prompt: str) -> str | list[Message]:
    """The rewriter input for ``prompt``: a string (text templates) or one user message (chat)."""
    t = _lookup(REWRITER_TEMPLATES, template, "rewriter")
    text = t.text.format(prompt=prompt)
    return text if t.style == "text" else [user(text)]
