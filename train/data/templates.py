"""The helper prompt templates for training, taken from ``models.templates`` (the one source the gateway also
renders its helper requests with), so a helper is trained on exactly the input it is served.

Completion templates (``bpo``, ``aligner-v1``, ``aligner-v2``) render to one string: the prompt of a TRL
*standard* prompt-completion row. Chat templates (``bpo-chat``, ``aligner-chat``) render to system + user
messages, a TRL *conversational* prompt; the chat model's own template is applied by TRL/the tokenizer.

``completion_prefix`` is what goes between the rendered prompt and the target text in a text SFT row. BPO was
trained on Llama-2-chat's ``[INST] ... [/INST] answer`` layout, hence one space; Aligner (safe-rlhf layout)
concatenates ``ASSISTANT:`` and the answer directly. Consumers strip the generated text either way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from models.templates import (
    ALIGNER_V1_TEMPLATE,
    ALIGNER_V2_TEMPLATE,
    BPO_TEMPLATE,
    Rendered,
    get_template,
    template_names,
)
from train.data.formats import Message

__all__ = [
    "ALIGNER_TEMPLATES",
    "ALIGNER_V1_TEMPLATE",
    "ALIGNER_V2_TEMPLATE",
    "BPO_TEMPLATE",
    "REWRITER_TEMPLATES",
    "Template",
    "render_aligner_prompt",
    "render_rewriter_prompt",
]


@dataclass(frozen=True)
class Template:
    """How a helper template shapes SFT rows: ``text`` (one prompt string) or ``chat`` (messages)."""

    name: str
    style: Literal["text", "chat"]
    completion_prefix: str = ""


def _templates(helper: Literal["rewriter", "aligner"]) -> dict[str, Template]:
    out = {}
    for name in template_names(helper):
        style: Literal["text", "chat"] = "text" if get_template(name).kind == "completion" else "chat"
        out[name] = Template(name, style, " " if name == "bpo" else "")
    return out


ALIGNER_TEMPLATES: dict[str, Template] = _templates("aligner")
REWRITER_TEMPLATES: dict[str, Template] = _templates("rewriter")


def _messages(rendered: Rendered) -> str | list[Message]:
    if isinstance(rendered, str):
        return rendered
    return [{"role": turn.role, "content": turn.content} for turn in rendered]


def render_aligner_prompt(template: str, question: str, answer: str) -> str | list[Message]:
    """The Aligner input for ``(question, answer)``: a string (text templates) or system + user messages."""
    return _messages(get_template(template, "aligner").render({"question": question, "answer": answer}))


def render_rewriter_prompt(template: str, prompt: str) -> str | list[Message]:
    """The rewriter input for ``prompt``: a string (text templates) or system + user messages."""
    return _messages(get_template(template, "rewriter").render({"prompt": prompt}))
