"""models/wire/errors.py: the one table between engine exceptions and HTTP answers."""

from __future__ import annotations

import pytest

from models.engine import EngineError, EngineOverloaded, EngineTimeout
from models.wire.errors import FAILED, OVERLOADED, TIMED_OUT, Failure, engine_failure, error_for_status

ERRORS = [
    (EngineTimeout("too slow"), "timeout"),
    (EngineOverloaded("queue full"), "overloaded"),
    (EngineError("boom"), "error"),
]


def test_failure_reason() -> None:
    for exc, reason in ERRORS:
        assert engine_failure(exc).reason == reason


@pytest.mark.parametrize(
    ("exc", "failure"),
    [
        (EngineOverloaded("full"), Failure(503, "overloaded_error", "engine_overloaded", "overloaded")),
        (EngineTimeout("slow"), Failure(504, "upstream_error", "upstream_timeout", "timeout")),
        (TimeoutError(), Failure(504, "upstream_error", "upstream_timeout", "timeout")),
        (EngineError("boom"), Failure(502, "upstream_error", "engine_error", "error")),
        (RuntimeError("bug"), Failure(502, "upstream_error", "engine_error", "error")),
    ],
)
def test_engine_failure_table(exc: BaseException, failure: Failure) -> None:
    assert engine_failure(exc) == failure
    assert engine_failure(exc) in (OVERLOADED, TIMED_OUT, FAILED)


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (429, EngineOverloaded),
        (503, EngineOverloaded),
        (504, EngineTimeout),
        (500, EngineError),
        (502, EngineError),
        (401, EngineError),
        (400, EngineError),
    ],
)
def test_error_for_status(status: int, kind: type[EngineError]) -> None:
    err = error_for_status(status, "the message")
    assert type(err) is kind
    assert str(err) == "the message"
