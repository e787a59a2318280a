"""Strict checks of an inference request body, before anything is sent upstream (``server.limits``).

:func:`checked_request` parses a body once and refuses, each with a 400 in the OpenAI shape whose ``param`` names
the field:

* a number that is not finite, anywhere in the body (unknown fields included): the literals ``NaN``,
  ``Infinity`` and ``-Infinity``, which are not JSON but which Python's ``json`` and pydantic's parser accept, and
  numbers beyond a 64-bit float's range (``1e999``), which they read as infinity — code ``non_finite_number``;
* a body nested deeper than ``max_body_depth`` (code ``body_too_deep``; ``param`` is the top-level field);
* ``n`` or ``best_of`` above ``max_n``, ``max_tokens`` or ``max_completion_tokens`` above ``max_tokens``
  (code ``integer_above_max_value``), more ``messages`` (or completion prompts) than ``max_messages``
  (code ``array_above_max_length``), in OpenAI's own wording;
* everything the request schema checks (``models.wire.schemas``; ``gateway.errors.from_validation_error``).

The body is parsed by orjson, which refuses every non-finite number; the parsed object is then validated, so the
strictness costs no second parse. Only a body orjson refuses is read again, by the standard library with hooks
that mark the non-finite numbers, to tell a non-finite number (and where it is) from malformed JSON.
Each refusal of the first three kinds is counted in ``aligngate_rejected_total{reason}``. The client's bytes are
what goes upstream: unknown fields and custom roles pass untouched.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from typing import Any, TypeVar

import orjson
from pydantic import ValidationError

from gateway import metrics
from gateway.config import LimitsSettings
from gateway.errors import BadRequest, from_validation_error
from models.wire.schemas import ChatCompletionRequest, CompletionRequest

R = TypeVar("R", ChatCompletionRequest, CompletionRequest)

#: Longest number literal quoted back in a message.
_MAX_LITERAL = 24


class _NonFinite:
    """Stands in for a non-finite number while a refused body is read again."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text if len(text) <= _MAX_LITERAL else text[:_MAX_LITERAL] + "…"


def _float(text: str) -> float | _NonFinite:
    value = float(text)
    return value if math.isfinite(value) else _NonFinite(text)


def _int(text: str) -> int | _NonFinite:
    # an integer too large for a float is infinity to every reader that makes it one (orjson, most servers)
    return _NonFinite(text) if math.isinf(float(text)) else int(text)


def _first_non_finite(node: Any, path: list[str]) -> tuple[list[str], _NonFinite] | None:
    if isinstance(node, _NonFinite):
        return path, node
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        found = _first_non_finite(value, [*path, str(key)])
        if found is not None:
            return found
    return None


def _refused(raw: bytes) -> BadRequest:
    """The 400 for a body orjson refused: a non-finite number (naming where), too deep, or malformed JSON."""
    try:
        data = json.loads(raw, parse_constant=_NonFinite, parse_float=_float, parse_int=_int)
    except RecursionError:
        metrics.rejected("body_too_deep")
        return BadRequest("Request body nests too deep.", code="body_too_deep")
    except ValueError:  # JSONDecodeError, invalid UTF-8
        return BadRequest("Malformed JSON in request body.", code="invalid_json")
    found = _first_non_finite(data, [])
    if found is None:  # JSON the standard library takes but orjson does not (a lone surrogate, ...)
        return BadRequest("Malformed JSON in request body.", code="invalid_json")
    path, number = found
    param = ".".join(path) or None
    where = f"Invalid value for '{param}'" if param else "Invalid request"
    if number.text in ("NaN", "Infinity", "-Infinity"):
        why = f"{number.text} is not a JSON number; send a finite number"
    else:
        why = f"{number.text} is beyond the range of a 64-bit float"
    metrics.rejected("non_finite_number")
    return BadRequest(f"{where}: {why}.", param=param, code="non_finite_number")


def _deeper_than(node: dict[str, Any] | list[Any], levels: int) -> bool:
    """Whether containers nest inside ``node`` (itself one level) to more than ``levels`` levels in all."""
    children: Iterable[Any] = node.values() if isinstance(node, dict) else node
    for child in children:
        if (type(child) is dict or type(child) is list) and (levels <= 1 or _deeper_than(child, levels - 1)):
            return True
    return False


def _check_depth(data: Any, limit: int) -> None:
    if (type(data) is dict or type(data) is list) and _deeper_than(data, limit):
        param = None
        if type(data) is dict:
            param = next((k for k, v in data.items() if type(v) in (dict, list) and (
                limit <= 1 or _deeper_than(v, limit - 1))), None)
        metrics.rejected("body_too_deep")
        where = f" (in '{param}')" if param else ""
        raise BadRequest(f"Request body nests deeper than {limit} levels{where}.", param=param, code="body_too_deep")


def _above(param: str, value: int, limit: int, reason: str) -> BadRequest:
    metrics.rejected(reason)
    return BadRequest(
        f"Invalid '{param}': integer above maximum value. Expected a value <= {limit}, but got {value} instead.",
        param=param, code="integer_above_max_value",
    )


def _too_long(param: str, length: int, limit: int) -> BadRequest:
    metrics.rejected("messages")
    return BadRequest(
        f"Invalid '{param}': array too long. Expected an array with maximum length {limit}, but got an array with "
        f"length {length} instead.",
        param=param, code="array_above_max_length",
    )


def _check_bounds(req: ChatCompletionRequest | CompletionRequest, limits: LimitsSettings) -> None:
    max_n, max_tokens, max_messages = limits.max_n, limits.max_tokens, limits.max_messages
    if max_n and req.n is not None and req.n > max_n:
        raise _above("n", req.n, max_n, "n")
    if max_tokens and req.max_tokens is not None and req.max_tokens > max_tokens:
        raise _above("max_tokens", req.max_tokens, max_tokens, "max_tokens")
    if isinstance(req, ChatCompletionRequest):
        if max_tokens and req.max_completion_tokens is not None and req.max_completion_tokens > max_tokens:
            raise _above("max_completion_tokens", req.max_completion_tokens, max_tokens, "max_tokens")
        if max_messages and len(req.messages) > max_messages:
            raise _too_long("messages", len(req.messages), max_messages)
        return
    if max_n and req.best_of is not None and req.best_of > max_n:
        raise _above("best_of", req.best_of, max_n, "n")
    prompt = req.prompt
    # a batch: several strings or several token-id lists (one list of token ids is one prompt)
    if (max_messages and isinstance(prompt, list) and len(prompt) > max_messages
            and not isinstance(prompt[0], int)):
        raise _too_long("prompt", len(prompt), max_messages)


def checked_request(raw: bytes, schema: type[R], limits: LimitsSettings) -> R:
    """The validated request of body ``raw``; raises ``BadRequest`` (a 400 naming the field) for anything refused."""
    if not raw:
        raise BadRequest("Request body is empty; expected a JSON object.", code="invalid_json")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise _refused(raw) from None
    if limits.max_body_depth:
        _check_depth(data, limits.max_body_depth)
    try:
        req = schema.model_validate(data)
    except ValidationError as exc:
        raise from_validation_error(exc, data) from None
    _check_bounds(req, limits)
    return req
