"""The query parameters and JSON answers of ``/ui/api/*``: the contract the web pages read.

Queries tolerate nothing unknown (an unknown or repeated parameter is a 400 naming it); an empty value
(``arm=``) is the same as leaving the parameter out. Answers are the models below, as JSON.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictStr, field_validator

from gateway.config import Arm
from gateway.report.source import parse_since

#: Most rows ``/ui/api/traces`` answers at once.
MAX_LIMIT = 500
#: Longest ``prompt`` of a trace summary (characters).
PROMPT_CHARS = 200


class _Query(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NoQuery(_Query):
    """A route that takes no parameter (``GET /ui/api/info``)."""


class TracesQuery(_Query):
    """``GET /ui/api/traces?arm=&model=&status=ok|error|<int>&rated=yes|no&limit=50&before=<epoch>``."""

    arm: Arm | None = None
    model: StrictStr | None = Field(None, max_length=256)
    #: ``ok`` (below 400, no failure after the start), ``error`` (the others), or one HTTP status.
    status: Literal["ok", "error"] | int | None = None
    #: ``yes``: requests with feedback; ``no``: without.
    rated: Literal["yes", "no"] | None = None
    limit: int = Field(50, ge=1, le=MAX_LIMIT)
    #: Only requests that arrived before this time (epoch seconds): the ``next_before`` of the previous page.
    before: float | None = Field(None, allow_inf_nan=False)

    @field_validator("status", mode="before")
    @classmethod
    def _status(cls, value: Any) -> Any:
        if value in (None, "ok", "error"):
            return value
        if isinstance(value, str) and value.isascii() and value.isdigit() and 100 <= int(value) <= 599:
            return int(value)
        raise ValueError("status must be ok, error or an HTTP status (100 to 599)")


class TraceQuery(_Query):
    """``GET /ui/api/trace?id=<request id>``."""

    id: StrictStr = Field(min_length=1, max_length=128)


class ExperimentQuery(_Query):
    """``GET /ui/api/experiment?since=<epoch seconds or ISO 8601>``."""

    since: float | None = None

    @field_validator("since", mode="before")
    @classmethod
    def _since(cls, value: Any) -> Any:
        if value is None:
            return None
        text = str(value)
        try:
            number = float(text)
        except ValueError:
            try:
                return parse_since(text)
            except ValueError:
                raise ValueError("since must be epoch seconds or an ISO 8601 date or time") from None
        if not math.isfinite(number):
            raise ValueError("since must be a finite number of epoch seconds")
        return number


# ------------------------------------------------------------------------------------------------ answers


class Info(BaseModel):
    """``GET /ui/api/info``."""

    experiment: str
    #: The arms whose helpers are configured (so that a request can be forced onto them), in the usual order.
    arms: list[str]
    #: The backend names (``/v1/models``).
    models: list[str]
    #: Whether ``server.api_keys`` is set (the pages must send ``Authorization: Bearer <key>``).
    auth: bool
    #: Whether the trace store is enabled (``store.enabled``): without it there are no traces.
    store: bool
    #: Whether prompts and answers are stored (``store.log_bodies``): without them ``prompt`` and texts are null.
    log_bodies: bool


class TraceSummary(BaseModel):
    """One row of ``GET /ui/api/traces``."""

    id: str
    time: float
    arm: str
    arm_forced: bool
    model: str
    endpoint: str
    stream: bool
    status: int
    outcome: str | None
    latency_ms: float
    rewriter_ms: float | None
    aligner_ms: float | None
    #: The latest rating (1, -1), or null without feedback.
    rating: int | None
    #: The text of the last user message, cut to ``PROMPT_CHARS`` characters; null without bodies.
    prompt: str | None


class TraceList(BaseModel):
    """``GET /ui/api/traces``: newest first; ``next_before`` is the ``before`` of the next page (null: no more)."""

    data: list[TraceSummary]
    next_before: float | None


class RequestRow(BaseModel):
    """Every column of a ``requests`` row except ``user_key_hash``."""

    id: str
    time: float
    experiment: str
    arm: str
    arm_forced: bool
    user_source: str
    bucket: int | None
    model: str
    endpoint: str
    stream: bool
    status: int
    outcome: str | None
    messages: Any
    rewritten_prompt: str | None
    raw_answer: str | None
    final_answer: str | None
    latency_ms: float
    ttft_ms: float | None
    overhead_ms: float
    rewriter_ms: float | None
    aligner_ms: float | None
    prompt_tokens: int | None
    completion_tokens: int | None
    rewriter_skipped: str | None
    aligner_skipped: str | None
    #: The aligner's reward gate (``helpers.aligner.gate``): scores of choice 0 and what it served; None without one.
    gate_raw_score: float | None = None
    gate_corrected_score: float | None = None
    gate_decision: str | None = None


class FeedbackRow(BaseModel):
    """A ``feedback`` row."""

    id: str
    request_id: str
    time: float
    rating: int
    comment: str | None
    correction: str | None


class ShadowRow(BaseModel):
    """A ``shadow_runs`` row."""

    id: str
    time: float
    experiment: str
    arm: str
    skipped: str | None
    rewritten_prompt: str | None
    corrected: str | None
    rewriter_ms: float | None
    aligner_ms: float | None
    rewriter_skipped: str | None
    aligner_skipped: str | None
    #: The aligner's reward gate (``helpers.aligner.gate``): scores of choice 0 and what it served; None without one.
    gate_raw_score: float | None = None
    gate_corrected_score: float | None = None
    gate_decision: str | None = None


class PreferenceRow(BaseModel):
    """A ``preferences`` row."""

    id: str
    time: float
    request_a: str
    request_b: str
    arm_a: str
    arm_b: str
    preferred: str
    left: str | None
    comment: str | None


class TraceDetail(BaseModel):
    """``GET /ui/api/trace``: the request, its feedback (oldest first), its shadow run, the preferences naming it."""

    request: RequestRow
    feedback: list[FeedbackRow]
    shadow: ShadowRow | None
    preferences: list[PreferenceRow]


class ExperimentAnswer(BaseModel):
    """``GET /ui/api/experiment``: ``report`` is the A/B report of the experiment (null: no requests yet)."""

    experiment: str
    since: float | None
    report: dict[str, Any] | None
