"""Helper prompt templates: the published BPO and Aligner strings, character for character, and chat variants.

A :class:`Template` renders the helper's input from named text fields (``prompt`` for a rewriter,
``question``/``answer`` for an aligner). Two kinds exist:

* ``"completion"`` templates render one prompt string for ``Engine.complete`` (an OpenAI-compatible
  ``/v1/completions`` server such as vLLM serving the published checkpoint). ``bpo``, ``aligner-v1``,
  ``aligner-v2`` and ``stream`` are the exact strings of the README's "Helper templates" (:data:`BPO_TEMPLATE`,
  :data:`ALIGNER_V1_TEMPLATE`, :data:`ALIGNER_V2_TEMPLATE`, :data:`STREAM_TEMPLATE`).
* ``"chat"`` templates render a system + user message pair for ``Engine.chat``, so a helper built on a chat
  model (the embedded default) sees the same instruction through its own chat template: ``bpo-chat``
  (system ``You are an expert prompt engineer.``, user the rest of BPO's instruction and the prompt),
  ``aligner-chat`` (system Aligner's instruction, user the labelled question and answer) and ``stream-chat``
  (system :data:`STREAM_CHAT_SYSTEM`, an instruction of ours: Stream Aligner's checkpoints were trained without
  one; user Stream Aligner's own input).

Two kinds of aligner template exist. The whole-answer ones (``aligner-*``) fill ``question`` and ``answer``. The
sentence ones (``stream``, ``stream-chat``; :attr:`Template.sentence`) correct one sentence at a time and fill
``question``, ``prefix`` (the answer before the sentence, as already corrected) and ``last`` (the sentence).

Rendering never parses user text: each template is split into literal pieces and ``{field}`` slots once,
at import, and a render only concatenates, so braces such as ``{}`` or ``{prompt}`` inside a prompt or an
answer come out literally. :func:`get_template` looks a template up by its config name (``helpers.*.template``)
and raises :class:`TemplateError` listing the valid names.

The module also holds the small pieces both helpers share: :func:`generate` / :func:`stream` (run a rendered
prompt on an ``Engine``).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Literal

from models.engine import ChatTurn, Completion, Delta, Engine, EngineError, SamplingParams

__all__ = [
    "ALIGNER_CHAT_SYSTEM",
    "ALIGNER_CHAT_USER",
    "ALIGNER_V1_TEMPLATE",
    "ALIGNER_V2_TEMPLATE",
    "BPO_CHAT_SYSTEM",
    "BPO_CHAT_USER",
    "BPO_TEMPLATE",
    "STREAM_CHAT_SYSTEM",
    "STREAM_CHAT_USER",
    "STREAM_TEMPLATE",
    "TEMPLATES",
    "HelperKind",
    "Rendered",
    "Template",
    "TemplateError",
    "TemplateKind",
    "generate",
    "get_template",
    "stream",
    "template_names",
]

TemplateKind = Literal["completion", "chat"]
HelperKind = Literal["rewriter", "aligner"]
#: A rendered helper input: a prompt string (completion templates) or chat turns (chat templates).
Rendered = str | tuple[ChatTurn, ...]

# ------------------------------------------------------------------------------------ published strings

#: BPO (THUDM/BPO, Llama-2-7b-chat based); the completion is the optimized prompt.
BPO_TEMPLATE = (
    "[INST] You are an expert prompt engineer. Please help me improve this prompt to get a more helpful and "
    "harmless response:\n{prompt} [/INST]"
)
#: Aligner v1 (aligner/aligner-7b-v1.0), decoded greedily.
ALIGNER_V1_TEMPLATE = (
    "BEGINNING OF CONVERSATION: USER: Edit the following Question-Answer pair to make it more helpful and "
    "harmless: {question} | {answer} ASSISTANT:"
)
#: Aligner v2 (the upstream repository's later training format); two spaces before ``ASSISTANT:``.
ALIGNER_V2_TEMPLATE = (
    "BEGINNING OF CONVERSATION: USER: ##Question: {question}\n##Answer: {answer}\n##Correction:  ASSISTANT:"
)

#: Stream Aligner (htlou/stream-aligner; its checkpoints are Gemma-based): the Gemma chat turns around its
#: correction input, as in its training and inference code; the completion is the corrected last sentence.
STREAM_TEMPLATE = (
    "<start_of_turn>user\n##Question: {question} | ##Answer_Prefix: {prefix} | ##Answer_Last_Sentence: {last} | "
    "##Your_Revision: <end_of_turn>\n<start_of_turn>model"
)

# Chat variants: the same instructions, split into a system and a user message.
BPO_CHAT_SYSTEM = "You are an expert prompt engineer."
BPO_CHAT_USER = "Please help me improve this prompt to get a more helpful and harmless response:\n{prompt}"
ALIGNER_CHAT_SYSTEM = "Edit the following Question-Answer pair to make it more helpful and harmless."
ALIGNER_CHAT_USER = "Question: {question}\nAnswer: {answer}"
#: Ours (Stream Aligner publishes no instruction text for its checkpoints): what a generic chat model is asked.
STREAM_CHAT_SYSTEM = (
    "Revise the last sentence of the answer to make it more helpful and harmless, keeping it consistent with the "
    "answer prefix, which is fixed. Reply with the revised sentence only."
)
#: Stream Aligner's own input (the user turn of :data:`STREAM_TEMPLATE`).
STREAM_CHAT_USER = (
    "##Question: {question} | ##Answer_Prefix: {prefix} | ##Answer_Last_Sentence: {last} | ##Your_Revision: "
)

_SLOT = re.compile(r"\{([a-z_]+)\}")


class TemplateError(ValueError):
    """An unknown template name, a template used by the wrong helper, or a missing field."""


@dataclass(frozen=True, slots=True)
class _Pattern:
    """A template string split once into literal pieces and field slots (no ``str.format`` at render time)."""

    pieces: tuple[str, ...]  # literal text; pieces[i] comes before slots[i]; one more piece than slots
    slots: tuple[str, ...]

    @classmethod
    def parse(cls, text: str) -> _Pattern:
        pieces: list[str] = []
        slots: list[str] = []
        pos = 0
        for match in _SLOT.finditer(text):
            pieces.append(text[pos : match.start()])
            slots.append(match.group(1))
            pos = match.end()
        pieces.append(text[pos:])
        return cls(tuple(pieces), tuple(slots))

    def fill(self, values: Mapping[str, str]) -> str:
        out = [self.pieces[0]]
        for slot, piece in zip(self.slots, self.pieces[1:], strict=True):
            out.append(values[slot])
            out.append(piece)
        return "".join(out)


@dataclass(frozen=True, slots=True)
class Template:
    """A helper template: its config ``name``, its ``kind``, which ``helper`` it serves, the text ``fields`` it
    needs, and ``render`` (field values → prompt string or chat turns).

    ``render`` checks that every field is given and is a string; use :meth:`Template.prompt` for a
    completion template's string and :meth:`Template.turns` for a chat template's messages.
    """

    name: str
    kind: TemplateKind
    helper: HelperKind
    fields: tuple[str, ...]
    renderer: Callable[[Mapping[str, str]], Rendered]

    def render(self, values: Mapping[str, str]) -> Rendered:
        missing = [f for f in self.fields if not isinstance(values.get(f), str)]
        if missing:
            raise TemplateError(f"template {self.name!r} needs text for {', '.join(missing)}")
        return self.renderer(values)

    @property
    def sentence(self) -> bool:
        """Whether this aligner template corrects one sentence at a time (fields ``prefix`` and ``last``)."""
        return "last" in self.fields


def _completion(name: str, helper: HelperKind, text: str) -> Template:
    pattern = _Pattern.parse(text)
    return Template(name, "completion", helper, pattern.slots, pattern.fill)


def _chat(name: str, helper: HelperKind, system: str, user: str) -> Template:
    system_pattern = _Pattern.parse(system)
    user_pattern = _Pattern.parse(user)
    fields = tuple(dict.fromkeys(system_pattern.slots + user_pattern.slots))

    def render(values: Mapping[str, str]) -> Rendered:
        return (
            ChatTurn("system", system_pattern.fill(values)),
            ChatTurn("user", user_pattern.fill(values)),
        )

    return Template(name, "chat", helper, fields, render)


#: Every template by config name.
TEMPLATES: Mapping[str, Template] = {
    t.name: t
    for t in (
        _completion("bpo", "rewriter", BPO_TEMPLATE),
        _chat("bpo-chat", "rewriter", BPO_CHAT_SYSTEM, BPO_CHAT_USER),
        _completion("aligner-v1", "aligner", ALIGNER_V1_TEMPLATE),
        _completion("aligner-v2", "aligner", ALIGNER_V2_TEMPLATE),
        _chat("aligner-chat", "aligner", ALIGNER_CHAT_SYSTEM, ALIGNER_CHAT_USER),
        _completion("stream", "aligner", STREAM_TEMPLATE),
        _chat("stream-chat", "aligner", STREAM_CHAT_SYSTEM, STREAM_CHAT_USER),
    )
}


def template_names(helper: HelperKind | None = None) -> list[str]:
    """Config names of the templates (of one helper, when ``helper`` is given)."""
    return [name for name, t in TEMPLATES.items() if helper is None or t.helper == helper]


def get_template(name: str, helper: HelperKind | None = None) -> Template:
    """The template called ``name``; with ``helper``, it must be one of that helper's templates.

    Raises :class:`TemplateError` naming the valid choices.
    """
    template = TEMPLATES.get(name)
    if template is None or (helper is not None and template.helper != helper):
        valid = ", ".join(template_names(helper))
        what = f"{helper} template" if helper is not None else "helper template"
        extra = f" ({name!r} is for the {template.helper})" if template is not None else ""
        raise TemplateError(f"unknown {what} {name!r}{extra}; valid names: {valid}")
    return template


# ------------------------------------------------------------------------------------ shared by helpers


async def generate(engine: Engine, rendered: Rendered, params: SamplingParams) -> Completion:
    """Run a rendered helper input on ``engine`` and return the first choice."""
    if isinstance(rendered, str):
        choices = await engine.complete(rendered, params)
    else:
        choices = await engine.chat(rendered, params)
    if not choices:
        raise EngineError(f"engine {engine.name!r} returned no choices")
    return min(choices, key=lambda c: c.index)


def stream(engine: Engine, rendered: Rendered, params: SamplingParams) -> AsyncIterator[Delta]:
    """Stream a rendered helper input on ``engine`` (the engine's own delta iterator)."""
    if isinstance(rendered, str):
        return engine.stream_complete(rendered, params)
    return engine.stream_chat(rendered, params)
