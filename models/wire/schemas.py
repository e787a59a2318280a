"""The OpenAI wire format, requests: the schemas of the inference routes' bodies, and the model list.

Requests are validated for the fields the gateway reads or that OpenAI types strictly; every other field
(vLLM extras such as ``top_k`` or ``structured_outputs``) is tolerated and forwarded untouched, because the
proxy forwards the client's own bytes, not a re-serialisation of these models. A body that does not validate
raises pydantic's ``ValidationError``; the gateway turns it into the 400 a client sees (``parse_request`` in its
error mapping). :func:`chat_messages` writes engine chat turns as a request's ``messages``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

from models.engine import ChatTurn

__all__ = [
    "ChatCompletionRequest",
    "ChatMessage",
    "CompletionRequest",
    "ContentPart",
    "ModelCard",
    "ModelList",
    "StreamOptions",
    "chat_messages",
]

Number = StrictInt | StrictFloat


class _Tolerant(BaseModel):
    model_config = ConfigDict(extra="allow")


class ContentPart(_Tolerant):
    type: StrictStr


class ChatMessage(_Tolerant):
    role: StrictStr
    content: StrictStr | list[ContentPart] | None = None
    name: StrictStr | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: StrictStr | None = None


class StreamOptions(_Tolerant):
    include_usage: StrictBool | None = None


class _SamplingRequest(_Tolerant):
    model: StrictStr
    stream: StrictBool | None = False
    stream_options: StreamOptions | None = None
    n: Annotated[StrictInt, Field(ge=1)] | None = None
    max_tokens: Annotated[StrictInt, Field(ge=0)] | None = None
    temperature: Number | None = None
    top_p: Number | None = None
    presence_penalty: Number | None = None
    frequency_penalty: Number | None = None
    seed: StrictInt | None = None
    stop: StrictStr | list[StrictStr] | None = None
    user: StrictStr | None = None
    logit_bias: dict[str, Number] | None = None


class ChatCompletionRequest(_SamplingRequest):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: Annotated[StrictInt, Field(ge=0)] | None = None
    logprobs: StrictBool | None = None
    top_logprobs: StrictInt | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: StrictStr | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None


class CompletionRequest(_SamplingRequest):
    prompt: StrictStr | list[StrictStr] | list[StrictInt] | list[list[StrictInt]] | None = None
    echo: StrictBool | None = None
    logprobs: StrictInt | None = None
    suffix: StrictStr | None = None
    best_of: StrictInt | None = None

    def has_prompt(self) -> bool:
        """A prompt, or vLLM's ``prompt_embeds`` in its place."""
        return self.prompt is not None or bool((self.model_extra or {}).get("prompt_embeds"))


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "aligngate"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


def chat_messages(turns: Sequence[ChatTurn]) -> list[dict[str, str]]:
    """Chat turns as the ``messages`` of a request body."""
    return [{"role": t.role, "content": t.content} for t in turns]
