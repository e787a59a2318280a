"""The one mapping from exceptions to the OpenAI error shape ``{"error": {message, type, param, code}}``.

Every error a client sees goes through here: the gateway's own (``GatewayError`` subclasses), engine failures
(``engine_error``, after the table in ``models.wire.errors``), request validation (``parse_request`` checks a
body against its ``models.wire.schemas`` model; ``from_validation_error``), unknown routes and methods
(:func:`route_error`, from the router), and anything unexpected (the request middleware logs its traceback and
answers ``internal_error_body`` without one). Every endpoint answers an exception through :func:`response_for`.
Streams use ``error_frame`` for failures after the first byte.
"""

from __future__ import annotations

from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError
from starlette.responses import Response

from gateway.context import RequestContext
from models.wire.errors import FAILED, OVERLOADED, TIMED_OUT, Failure, engine_failure
from models.wire.sse import encode_event


class GatewayError(Exception):
    """An error with the status and OpenAI error fields the client should see."""

    status: int = 500
    type: str = "server_error"
    code: str | None = None
    #: Response headers the answer carries (``Retry-After``, ``Connection: close``, rate-limit headers).
    headers: dict[str, str] | None = None

    def __init__(
        self, message: str, *, param: str | None = None, code: str | None = None, status: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        if headers is not None:
            self.headers = headers

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)


class BadRequest(GatewayError):
    status = 400
    type = "invalid_request_error"


class Unauthorized(GatewayError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class NotFound(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"


class PayloadTooLarge(GatewayError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class RequestTimeout(GatewayError):
    """The client did not send its request in time (``server.body_timeout_s``); the connection is closed."""

    status = 408
    type = "invalid_request_error"
    code = "request_timeout"
    headers = {"Connection": "close"}


class HeadersTooLarge(GatewayError):
    """The request line and headers are longer than ``server.max_header_bytes`` (answered below ASGI)."""

    status = 431
    type = "invalid_request_error"
    code = "request_header_fields_too_large"


class GatewayBusy(GatewayError):
    """The worker serves ``server.max_concurrent_requests`` requests already (503, retry after a second)."""

    status = 503
    type = "overloaded_error"
    code = "gateway_overloaded"
    headers = {"Retry-After": "1"}


class StoreUnavailableError(GatewayError):
    """The trace store is disabled (``store.enabled: false``) or cannot answer now (503 ``store_unavailable``)."""

    status = 503
    type = "server_error"
    code = "store_unavailable"


class RateLimited(GatewayError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


class UpstreamUnavailable(GatewayError):
    """No replica could be reached (or every attempt failed with a retryable status)."""

    status = 502
    type = "upstream_error"
    code = "upstream_unavailable"


class UpstreamTimeout(GatewayError):
    """The upstream (a replica, or an in-process engine) did not answer in time (504)."""

    status = TIMED_OUT.status
    type = TIMED_OUT.type
    code = TIMED_OUT.code


class EngineOverloadedError(GatewayError):
    """An in-process engine's queue is full (503, as an overloaded OpenAI-compatible server answers)."""

    status = OVERLOADED.status
    type = OVERLOADED.type
    code = OVERLOADED.code


class EngineFailed(GatewayError):
    """An in-process engine failed to answer (502)."""

    status = FAILED.status
    type = FAILED.type
    code = FAILED.code


_ENGINE_ERRORS: dict[Failure, type[GatewayError]] = {
    OVERLOADED: EngineOverloadedError,
    TIMED_OUT: UpstreamTimeout,
    FAILED: EngineFailed,
}


def engine_error(exc: BaseException, message: str) -> GatewayError:
    """The error answered for an engine call that failed with ``exc`` (``models.wire.errors``' table)."""
    return _ENGINE_ERRORS[engine_failure(exc)](message)


class UpstreamBroken(GatewayError):
    """The upstream failed after its response started (cut connection, malformed stream)."""

    status = 502
    type = "upstream_error"
    code = "upstream_stream_broken"


class ClientDisconnected(Exception):
    """The client closed its connection before the answer was ready (recorded as 499, nothing is sent)."""


#: Status recorded (never sent) for a request whose client went away first, as nginx does.
CLIENT_CLOSED = 499


def error_body(message: str, type_: str, param: str | None = None, code: str | int | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def outcome_of(exc: GatewayError) -> str:
    """The access log's and the trace store's ``outcome`` for a request answered with ``exc``: its code."""
    return exc.code or exc.type


def error_response(exc: GatewayError, headers: dict[str, str] | None = None) -> Response:
    if exc.headers:
        headers = {**exc.headers, **headers} if headers else exc.headers
    return Response(
        orjson.dumps(exc.body()), status_code=exc.status, media_type="application/json", headers=headers
    )


def raw_error_response(status: int, reason: str, exc: GatewayError) -> bytes:
    """A whole HTTP/1.1 error response that closes the connection, for answering below ASGI (a request whose
    headers never completed)."""
    body = orjson.dumps(exc.body())
    return (
        b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
        % (status, reason.encode("ascii"), len(body))
    ) + body


def internal_error_body() -> bytes:
    """The body of the 500 answered for an unexpected exception (logged, never shown to the client)."""
    return orjson.dumps(
        error_body("Internal error in the gateway; see its logs.", "server_error", None, "internal_error")
    )


def error_frame(exc: GatewayError) -> bytes:
    """An SSE event carrying the error, as vLLM and OpenAI send it mid-stream."""
    return encode_event(exc.body())


_UNSET: Any = object()


def _field_path(loc: tuple[Any, ...], data: Any, missing: bool) -> list[str]:
    """The part of a pydantic error location that names a place in the request.

    Pydantic adds labels for the alternatives of a union (``temperature.int``); walking the parsed request
    keeps only keys and indices that exist there (plus the absent key itself for a missing field).
    """
    parts = [p for p in loc if p != "body"]
    if data is _UNSET:
        return [str(p) for p in parts]
    out: list[str] = []
    node = data
    for i, part in enumerate(parts):
        if isinstance(node, dict) and isinstance(part, str) and part in node:
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        else:
            if missing and i == len(parts) - 1 and isinstance(node, dict):
                out.append(str(part))
            break
        out.append(str(part))
    return out


def from_validation_error(exc: ValidationError, data: Any = _UNSET) -> BadRequest:
    """Turn pydantic's error list into one readable 400, naming the first offending field as ``param``.

    ``data`` is the parsed request, when there is one: it lets union alternatives be told apart from
    field names, so ``param`` is always a path into the request (``messages.0.role``).
    """
    errors = exc.errors()
    if not errors:
        return BadRequest("Invalid request.")
    first = errors[0]
    if first.get("type") == "json_invalid":
        return BadRequest("Malformed JSON in request body.", code="invalid_json")
    by_path: dict[str, list[str]] = {}
    for err in errors:
        path = ".".join(_field_path(tuple(err.get("loc", ())), data, err.get("type") == "missing"))
        msgs = by_path.setdefault(path, [])
        msg = str(err.get("msg", "invalid value"))
        if msg not in msgs:
            msgs.append(msg)
    param, msgs = next(iter(by_path.items()))
    if first.get("type") == "missing" and param:
        return BadRequest(f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter")
    if len(msgs) > 1:  # the alternatives of a union: "Input should be a valid integer or a valid number"
        prefix = "Input should be "
        msgs = [m[len(prefix):] if m.startswith(prefix) and i else m for i, m in enumerate(msgs)]
    msg = " or ".join(msgs)
    message = f"Invalid value for '{param}': {msg}." if param else f"Invalid request: {msg}."
    if len(by_path) > 1:
        more = len(by_path) - 1
        message += f" ({more} more invalid field{'s' if more > 1 else ''})"
    return BadRequest(message, param=param or None, code="invalid_value")


R = TypeVar("R", bound=BaseModel)


def parse_request(raw: bytes, schema: type[R]) -> R:
    """Validate a request body against ``schema``; every failure is a 400 naming the offending field."""
    if not raw:
        raise BadRequest("Request body is empty; expected a JSON object.", code="invalid_json")
    try:
        return schema.model_validate_json(raw)
    except ValidationError as exc:
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise from_validation_error(exc) from None
        raise from_validation_error(exc, data) from None


_STATUS_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                 404: "invalid_request_error", 405: "invalid_request_error", 413: "invalid_request_error",
                 429: "rate_limit_error"}


def response_for(exc: Exception, ctx: RequestContext | None = None) -> Response:
    """The response an endpoint answers for ``exc``: a ``GatewayError`` in the OpenAI shape with its status, a
    validation error as a 400 naming the field, and for a client that went away an empty 499 (recorded, never
    sent). Anything else is re-raised: the request middleware logs it and answers a bare 500. ``ctx``, when
    given, gets the request's ``outcome``: the error's code, or ``client_disconnected``."""
    if isinstance(exc, ValidationError):
        exc = from_validation_error(exc)
    if isinstance(exc, GatewayError):
        if ctx is not None:
            ctx.outcome = outcome_of(exc)
        return error_response(exc)
    if isinstance(exc, ClientDisconnected):
        if ctx is not None:
            ctx.outcome = "client_disconnected"
        return Response(status_code=CLIENT_CLOSED)
    raise exc


def route_error(status: int, method: str, path: str, allow: str | None = None) -> Response:
    """404 for an unknown path, 405 (with ``Allow``) for a method the path does not take, in the OpenAI shape."""
    detail = f"Method {method} not allowed on {path}" if status == 405 else f"Unknown route: {method} {path}"
    return Response(
        orjson.dumps(error_body(detail, _STATUS_TYPES.get(status, "server_error"), None, None)),
        status_code=status, media_type="application/json", headers={"Allow": allow} if allow else None,
    )
