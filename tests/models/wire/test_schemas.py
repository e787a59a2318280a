"""models/wire/schemas.py: what the routes validate strictly, and what they tolerate and forward."""

from __future__ import annotations

import orjson
import pytest
from pydantic import ValidationError

from models.engine import ChatTurn
from models.wire.schemas import ChatCompletionRequest, CompletionRequest, ModelCard, ModelList, chat_messages

MSG = [{"role": "user", "content": "hi"}]


def _chat(**fields: object) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate_json(orjson.dumps({"model": "m", "messages": MSG, **fields}))


def test_minimal_chat_request() -> None:
    req = _chat()
    assert req.model == "m"
    assert req.stream is False
    assert req.messages[0].role == "user"
    assert req.messages[0].content == "hi"
    assert req.model_extra == {}


def test_unknown_fields_are_tolerated() -> None:
    req = _chat(top_k=5, structured_outputs={"json": {"type": "object"}}, chat_template_kwargs={"x": 1})
    assert req.model_extra == {
        "top_k": 5,
        "structured_outputs": {"json": {"type": "object"}},
        "chat_template_kwargs": {"x": 1},
    }


def test_message_shapes() -> None:
    req = _chat(
        messages=[
            {"role": "system", "content": None},
            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "image_url", "image_url": {}}]},
            {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function"}], "reasoning": "r"},
            {"role": "tool", "tool_call_id": "c1", "content": "42", "name": "calc"},
        ]
    )
    assert [m.role for m in req.messages] == ["system", "user", "assistant", "tool"]
    content = req.messages[1].content
    assert isinstance(content, list) and [p.type for p in content] == ["text", "image_url"]
    assert req.messages[2].model_extra == {"reasoning": "r"}
    assert req.messages[3].tool_call_id == "c1"


@pytest.mark.parametrize(
    "fields",
    [
        {"temperature": 1},
        {"temperature": 0.5},
        {"n": 2},
        {"max_tokens": 0},
        {"stop": "x"},
        {"stop": ["a", "b"]},
        {"stream": True, "stream_options": {"include_usage": True}},
        {"logit_bias": {"50256": -100}},
        {"tool_choice": "auto"},
        {"tool_choice": {"type": "function", "function": {"name": "f"}}},
        {"response_format": {"type": "json_object"}},
        {"logprobs": True, "top_logprobs": 3},
        {"seed": -1},
        {"max_completion_tokens": 5},
        {"user": "u1"},
        {"stream": None},
    ],
)
def test_valid_chat_fields(fields: dict[str, object]) -> None:
    req = _chat(**fields)
    for key, value in fields.items():
        got = getattr(req, key)
        assert (got.model_dump(exclude_unset=True) if hasattr(got, "model_dump") else got) == value


@pytest.mark.parametrize(
    ("fields", "loc"),
    [
        ({"stream": "true"}, ("stream",)),
        ({"stream": 1}, ("stream",)),
        ({"n": 0}, ("n",)),
        ({"n": "2"}, ("n",)),
        ({"n": 1.0}, ("n",)),
        ({"max_tokens": -1}, ("max_tokens",)),
        ({"seed": "1"}, ("seed",)),
        ({"model": 5}, ("model",)),
        ({"messages": []}, ("messages",)),
        ({"messages": "hi"}, ("messages",)),
        ({"messages": [{"content": "x"}]}, ("messages", 0, "role")),
        ({"messages": [{"role": 1}]}, ("messages", 0, "role")),
        ({"stream_options": {"include_usage": "yes"}}, ("stream_options", "include_usage")),
        ({"logprobs": 1}, ("logprobs",)),
    ],
)
def test_invalid_chat_fields(fields: dict[str, object], loc: tuple[object, ...]) -> None:
    with pytest.raises(ValidationError) as info:
        _chat(**fields)
    assert info.value.errors()[0]["loc"] == loc


def test_model_and_messages_are_required() -> None:
    with pytest.raises(ValidationError) as info:
        ChatCompletionRequest.model_validate_json(b"{}")
    assert [e["loc"] for e in info.value.errors()] == [("model",), ("messages",)]


@pytest.mark.parametrize(
    ("prompt", "ok"),
    [("text", True), ("", True), (["a", "b"], True), ([1, 2, 3], True), ([[1, 2], [3]], True), (None, False)],
)
def test_completion_prompt_shapes(prompt: object, ok: bool) -> None:
    req = CompletionRequest.model_validate_json(orjson.dumps({"model": "m", "prompt": prompt}))
    assert req.has_prompt() is ok


def test_completion_prompt_embeds_stand_in_for_a_prompt() -> None:
    req = CompletionRequest.model_validate_json(b'{"model": "m", "prompt_embeds": "base64=="}')
    assert req.has_prompt() is True
    empty = CompletionRequest.model_validate_json(b'{"model": "m", "prompt_embeds": ""}')
    assert empty.has_prompt() is False


@pytest.mark.parametrize("fields", [{"prompt": 5}, {"prompt": [1.5]}, {"logprobs": True}, {"echo": "no"}])
def test_invalid_completion_fields(fields: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        CompletionRequest.model_validate_json(orjson.dumps({"model": "m", **fields}))


def test_model_list_shape() -> None:
    listing = ModelList(data=[ModelCard(id="a", created=7), ModelCard(id="b", created=8)])
    assert listing.model_dump() == {
        "object": "list",
        "data": [
            {"id": "a", "object": "model", "created": 7, "owned_by": "aligngate"},
            {"id": "b", "object": "model", "created": 8, "owned_by": "aligngate"},
        ],
    }


def test_chat_messages_writes_turns_as_request_messages() -> None:
    turns = [ChatTurn("system", "Be brief."), ChatTurn("user", "hi")]
    assert chat_messages(turns) == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    assert (
        ChatCompletionRequest.model_validate({"model": "m", "messages": chat_messages(turns)}).messages[1].content
        == "hi"
    )
