"""gateway/errors.py: the OpenAI error shape for every error class, validation errors, frames, and the one mapping
from exceptions to responses as the router (gateway/routing.py) serves it."""

from __future__ import annotations

import httpx
import orjson
import pytest
from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import Response

from gateway.errors import (
    BadRequest,
    EngineFailed,
    EngineOverloadedError,
    GatewayError,
    ModelNotFound,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    Unauthorized,
    UpstreamBroken,
    UpstreamTimeout,
    UpstreamUnavailable,
    engine_error,
    error_body,
    error_frame,
    error_response,
    from_validation_error,
    internal_error_body,
    parse_request,
)
from gateway.routing import Router, endpoint
from models.engine import EngineError, EngineOverloaded, EngineTimeout
from models.wire.errors import engine_failure
from models.wire.schemas import ChatCompletionRequest
from models.wire.sse import iter_events


@pytest.mark.parametrize(
    ("cls", "status", "type_", "code"),
    [
        (GatewayError, 500, "server_error", None),
        (BadRequest, 400, "invalid_request_error", None),
        (Unauthorized, 401, "authentication_error", "invalid_api_key"),
        (NotFound, 404, "invalid_request_error", "not_found"),
        (ModelNotFound, 404, "invalid_request_error", "model_not_found"),
        (PayloadTooLarge, 413, "invalid_request_error", "request_too_large"),
        (RateLimited, 429, "rate_limit_error", "rate_limit_exceeded"),
        (UpstreamUnavailable, 502, "upstream_error", "upstream_unavailable"),
        (UpstreamTimeout, 504, "upstream_error", "upstream_timeout"),
        (UpstreamBroken, 502, "upstream_error", "upstream_stream_broken"),
        (EngineOverloadedError, 503, "overloaded_error", "engine_overloaded"),
        (EngineFailed, 502, "upstream_error", "engine_error"),
    ],
)
def test_error_classes(cls: type[GatewayError], status: int, type_: str, code: str | None) -> None:
    exc = cls("it failed", param="messages")
    assert isinstance(exc, GatewayError)
    assert str(exc) == "it failed"
    assert exc.status == status
    assert exc.type == type_
    assert exc.code == code
    assert exc.body() == {"error": {"message": "it failed", "type": type_, "param": "messages", "code": code}}
    assert list(exc.body()["error"]) == ["message", "type", "param", "code"]


@pytest.mark.parametrize(
    ("exc", "cls"),
    [
        (EngineOverloaded("full"), EngineOverloadedError),
        (EngineTimeout("slow"), UpstreamTimeout),
        (TimeoutError(), UpstreamTimeout),
        (EngineError("boom"), EngineFailed),
        (RuntimeError("bug"), EngineFailed),
    ],
)
def test_engine_error_follows_the_wire_table(exc: BaseException, cls: type[GatewayError]) -> None:
    err = engine_error(exc, "the message")
    assert type(err) is cls
    failure = engine_failure(exc)
    assert (err.status, err.type, err.code, err.message) == (failure.status, failure.type, failure.code, "the message")


def test_instance_overrides_do_not_touch_the_class() -> None:
    exc = BadRequest("x", code="custom", status=422)
    assert (exc.status, exc.code) == (422, "custom")
    assert (BadRequest.status, BadRequest.code) == (400, None)
    assert BadRequest("y").code is None
    assert Unauthorized("z", code="missing_api_key").code == "missing_api_key"
    assert Unauthorized.code == "invalid_api_key"
    assert ModelNotFound("m").param is None


def test_error_body_shape() -> None:
    assert error_body("m", "t") == {"error": {"message": "m", "type": "t", "param": None, "code": None}}
    assert error_body("m", "t", "p", 503) == {"error": {"message": "m", "type": "t", "param": "p", "code": 503}}


def test_error_response() -> None:
    resp = error_response(PayloadTooLarge("too big"), headers={"X-A": "1"})
    assert resp.status_code == 413
    assert resp.media_type == "application/json"
    assert resp.headers["x-a"] == "1"
    assert orjson.loads(resp.body) == {
        "error": {"message": "too big", "type": "invalid_request_error", "param": None, "code": "request_too_large"}
    }


def test_internal_error_body() -> None:
    assert orjson.loads(internal_error_body()) == {
        "error": {
            "message": "Internal error in the gateway; see its logs.",
            "type": "server_error",
            "param": None,
            "code": "internal_error",
        }
    }


def test_error_frame_is_one_sse_event() -> None:
    frame = error_frame(UpstreamBroken("cut off"))
    assert frame == (
        b'data: {"error":{"message":"cut off","type":"upstream_error","param":null,'
        b'"code":"upstream_stream_broken"}}\n\n'
    )
    [(event, data)] = list(iter_events(frame))
    assert event == "message"
    assert orjson.loads(data)["error"]["code"] == "upstream_stream_broken"


# ---------------------------------------------------------------- from_validation_error


class Message(BaseModel):
    role: str
    content: str


class Body(BaseModel):
    model: str
    messages: list[Message]
    n: int = 1


def _validation_error(raw: bytes) -> ValidationError:
    with pytest.raises(ValidationError) as info:
        Body.model_validate_json(raw)
    return info.value


def test_validation_json_invalid() -> None:
    exc = from_validation_error(_validation_error(b'{"model": '))
    assert isinstance(exc, BadRequest)
    assert exc.status == 400
    assert exc.body() == {
        "error": {
            "message": "Malformed JSON in request body.",
            "type": "invalid_request_error",
            "param": None,
            "code": "invalid_json",
        }
    }


def test_validation_missing_field() -> None:
    exc = from_validation_error(_validation_error(b'{"messages": []}'))
    assert exc.param == "model"
    assert exc.code == "missing_required_parameter"
    assert exc.message == "Missing required parameter: 'model'."


def test_validation_nested_missing_field_names_the_path() -> None:
    exc = from_validation_error(_validation_error(b'{"model": "m", "messages": [{"role": "user"}]}'))
    assert exc.param == "messages.0.content"
    assert exc.message == "Missing required parameter: 'messages.0.content'."


def test_validation_wrong_type() -> None:
    exc = from_validation_error(_validation_error(b'{"model": "m", "messages": [], "n": "many"}'))
    assert exc.param == "n"
    assert exc.code == "invalid_value"
    assert exc.message.startswith("Invalid value for 'n': Input should be a valid integer")
    assert "more error" not in exc.message


def test_validation_nested_wrong_type_names_the_path() -> None:
    raw = b'{"model": "m", "messages": [{"role": "user", "content": "hi"}, {"role": 5, "content": "x"}]}'
    exc = from_validation_error(_validation_error(raw))
    assert exc.param == "messages.1.role"
    assert exc.message == "Invalid value for 'messages.1.role': Input should be a valid string."


def test_validation_multiple_errors_name_the_first_and_count_the_rest() -> None:
    two = from_validation_error(_validation_error(b'{"model": 1, "messages": 2}'))
    assert two.param == "model"
    assert two.message == "Invalid value for 'model': Input should be a valid string. (1 more invalid field)"
    three = from_validation_error(_validation_error(b'{"model": 1, "messages": 2, "n": "x"}'))
    assert three.message.endswith("(2 more invalid fields)")


def test_validation_non_object_has_no_param() -> None:
    exc = from_validation_error(_validation_error(b"[1, 2]"))
    assert exc.param is None
    assert exc.code == "invalid_value"
    assert exc.message.startswith("Invalid request: Input should be")


def test_validation_empty_error_list() -> None:
    exc = from_validation_error(ValidationError.from_exception_data("Body", []))
    assert exc.message == "Invalid request."
    assert exc.status == 400


# ---------------------------------------------------------------- response_for, route_error (through the router)


def _tiny_app() -> Router:
    async def thing(request: Request) -> Response:
        return Response(orjson.dumps({"ok": "yes"}), media_type="application/json")

    async def items(request: Request) -> Response:
        body = parse_request(await request.body(), Body)
        return Response(orjson.dumps({"model": body.model}), media_type="application/json")

    async def limited(request: Request) -> Response:
        raise RateLimited("slow down", param="user")

    async def raw_pydantic(request: Request) -> Response:
        Body.model_validate({"model": "m"})
        raise AssertionError("unreachable")

    return Router([
        ("GET", "/thing", endpoint(thing)),
        ("POST", "/items", endpoint(items)),
        ("GET", "/limited", endpoint(limited)),
        ("GET", "/pydantic", endpoint(raw_pydantic)),
    ])


@pytest.fixture
async def tiny() -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=_tiny_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        yield client


async def test_unknown_route_is_404_in_openai_shape(tiny: httpx.AsyncClient) -> None:
    r = await tiny.get("/nope")
    assert r.status_code == 404
    assert r.headers["content-type"] == "application/json"
    assert r.json() == {
        "error": {"message": "Unknown route: GET /nope", "type": "invalid_request_error", "param": None, "code": None}
    }


async def test_wrong_method_is_405_in_openai_shape(tiny: httpx.AsyncClient) -> None:
    r = await tiny.post("/thing")
    assert r.status_code == 405
    assert r.headers["allow"] == "GET"
    assert r.json() == {
        "error": {
            "message": "Method POST not allowed on /thing",
            "type": "invalid_request_error",
            "param": None,
            "code": None,
        }
    }


async def test_gateway_error_handler(tiny: httpx.AsyncClient) -> None:
    r = await tiny.get("/limited")
    assert r.status_code == 429
    assert r.json() == {
        "error": {"message": "slow down", "type": "rate_limit_error", "param": "user", "code": "rate_limit_exceeded"}
    }


async def test_request_validation_error_handler(tiny: httpx.AsyncClient) -> None:
    r = await tiny.post("/items", json={"model": "m", "messages": [{"role": "user"}]})
    assert r.status_code == 400
    assert r.json() == {
        "error": {
            "message": "Missing required parameter: 'messages.0.content'.",
            "type": "invalid_request_error",
            "param": "messages.0.content",
            "code": "missing_required_parameter",
        }
    }
    bad = await tiny.post("/items", content=b"{oops", headers={"content-type": "application/json"})
    assert bad.status_code == 400
    assert bad.json()["error"]["code"] == "invalid_json"


async def test_pydantic_validation_error_raised_in_a_route(tiny: httpx.AsyncClient) -> None:
    r = await tiny.get("/pydantic")
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "messages"
    assert r.json()["error"]["code"] == "missing_required_parameter"


# ---------------------------------------------------------------- parse_request (the 400 a client sees)


def test_parse_request_ok() -> None:
    req = parse_request(b'{"model": "m", "messages": [{"role": "user", "content": "x"}]}', ChatCompletionRequest)
    assert isinstance(req, ChatCompletionRequest)


def test_parse_request_empty_body() -> None:
    with pytest.raises(BadRequest) as info:
        parse_request(b"", ChatCompletionRequest)
    assert info.value.code == "invalid_json"
    assert info.value.message == "Request body is empty; expected a JSON object."


def test_parse_request_names_the_nested_field() -> None:
    with pytest.raises(BadRequest) as info:
        parse_request(b'{"model": "m", "messages": [{"role": ["user"]}]}', ChatCompletionRequest)
    assert info.value.param == "messages.0.role"
    assert info.value.code == "invalid_value"


@pytest.mark.parametrize(
    ("raw", "param"),
    [
        (b'{"model": "m", "messages": [{"role": "user"}], "temperature": "hot"}', "temperature"),
        (b'{"model": "m", "messages": [{"role": "user"}], "stop": 5}', "stop"),
        (b'{"model": "m", "messages": [{"role": "user", "content": 5}]}', "messages.0.content"),
    ],
    ids=["temperature", "stop", "content"],
)
def test_parse_request_union_field_param_is_the_field_path(raw: bytes, param: str) -> None:
    with pytest.raises(BadRequest) as info:
        parse_request(raw, ChatCompletionRequest)
    assert info.value.param == param
    assert "more error" not in info.value.message
