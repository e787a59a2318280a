"""Engine failures on the OpenAI wire, both ways: the one table between engine exceptions and HTTP answers.

Engine exception → what a client is answered (:func:`engine_failure`; the gateway's exception classes in its
error mapping take their status, ``type`` and ``code`` from here), with the ``reason`` that labels the failure
in metrics and traces:

======================================================  ======  ====================  =====================  ==========
exception                                               status  type                  code                   reason
======================================================  ======  ====================  =====================  ==========
``EngineOverloaded``                                    503     ``overloaded_error``  ``engine_overloaded``  overloaded
``EngineTimeout``, ``TimeoutError`` (a deadline passed) 504     ``upstream_error``    ``upstream_timeout``   timeout
any other ``EngineError`` (or unexpected exception)     502     ``upstream_error``    ``engine_error``       error
======================================================  ======  ====================  =====================  ==========

HTTP status of an OpenAI-compatible server → engine exception (:func:`error_for_status`): 429 and 503 are
``EngineOverloaded``, 504 is ``EngineTimeout``, every other error status ``EngineError``.
"""

from __future__ import annotations

from dataclasses import dataclass

from models.engine import EngineError, EngineOverloaded, EngineTimeout

__all__ = [
    "FAILED", "OVERLOADED", "OVERLOAD_STATUSES", "RETRY_STATUSES", "TIMED_OUT", "Failure", "engine_failure",
    "error_for_status",
]

#: Statuses a server answers when it is too busy (an ``EngineOverloaded``).
OVERLOAD_STATUSES = frozenset({429, 503})
#: Statuses of a replica worth trying again elsewhere (a gateway or proxy in front of it failed, or it is busy).
RETRY_STATUSES = frozenset({502, 503, 504})


@dataclass(frozen=True, slots=True)
class Failure:
    """How a failed engine call is answered: HTTP status, OpenAI error ``type`` and ``code``, and its reason."""

    status: int
    type: str
    code: str
    #: The failure's label in metrics and in ``failed:<reason>`` skip reasons.
    reason: str


OVERLOADED = Failure(503, "overloaded_error", "engine_overloaded", "overloaded")
TIMED_OUT = Failure(504, "upstream_error", "upstream_timeout", "timeout")
FAILED = Failure(502, "upstream_error", "engine_error", "error")


def engine_failure(exc: BaseException) -> Failure:
    """The row of the table for ``exc``."""
    if isinstance(exc, EngineOverloaded):
        return OVERLOADED
    if isinstance(exc, EngineTimeout | TimeoutError):
        return TIMED_OUT
    return FAILED


def error_for_status(status: int, message: str) -> EngineError:
    """The engine exception for a server's error ``status``, carrying ``message``."""
    if status in OVERLOAD_STATUSES:
        return EngineOverloaded(message)
    if status == 504:
        return EngineTimeout(message)
    return EngineError(message)
