"""The one async interface every inference engine implements (local in-process or remote OpenAI-compatible).

Helpers (rewriter, aligner) and local backends talk to an ``Engine`` only: ``complete`` for a raw text
prompt (the published BPO/Aligner templates are plain-text prompts), ``chat`` for chat messages (the
engine applies its chat template), each with a streaming twin that yields text deltas. Errors are the
engine exceptions below; the gateway maps them to HTTP statuses (overload 429/503, timeout 504, other 502).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True, slots=True)
class ChatTurn:
    """One chat message as engines see it (text content only)."""

    role: str
    content: str


@dataclass(frozen=True, slots=True)
class SamplingParams:
    max_tokens: int = 256
    #: 0 means greedy decoding.
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    #: Number of completions for the same prompt (OpenAI's ``n``).
    n: int = 1


@dataclass(frozen=True, slots=True)
class Completion:
    """One finished generation (``n`` > 1 gives one per choice, ``index`` 0..n-1)."""

    text: str
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    index: int = 0


@dataclass(slots=True)
class Delta:
    """A streamed piece of choice ``index``; the last one of a choice carries ``finish_reason`` and counts."""

    text: str
    index: int = 0
    finish_reason: FinishReason | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    extra: dict[str, object] = field(default_factory=dict)


class EngineError(Exception):
    """The engine failed to produce an answer (maps to 502)."""


class EngineOverloaded(EngineError):
    """The engine's queue is full; retry later (maps to 429/503)."""


class EngineTimeout(EngineError):
    """The engine did not answer in time (maps to 504)."""


class PromptTooLong(EngineError):
    """The prompt, tokenized, does not fit the model's context: a request the client must shorten (a local backend
    answers it 400 ``context_length_exceeded``, as OpenAI and vLLM do; elsewhere it is an ``EngineError``)."""

    def __init__(self, prompt_tokens: int, context: int) -> None:
        super().__init__(f"the prompt has {prompt_tokens} tokens; the model's context is {context}")
        self.prompt_tokens = prompt_tokens
        self.context = context

    def __reduce__(self) -> tuple[type[PromptTooLong], tuple[int, int]]:
        return type(self), (self.prompt_tokens, self.context)


@runtime_checkable
class Engine(Protocol):
    """An inference engine; implementations must be safe to call concurrently from one event loop."""

    name: str

    async def complete(self, prompt: str, params: SamplingParams) -> list[Completion]: ...

    async def chat(self, messages: Sequence[ChatTurn], params: SamplingParams) -> list[Completion]: ...

    def stream_complete(self, prompt: str, params: SamplingParams) -> AsyncIterator[Delta]: ...

    def stream_chat(self, messages: Sequence[ChatTurn], params: SamplingParams) -> AsyncIterator[Delta]: ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...
