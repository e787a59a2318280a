"""Prometheus metrics, all prefixed ``aligngate_``, and their exposition.

With several uvicorn workers the CLI sets ``PROMETHEUS_MULTIPROC_DIR`` before any worker imports this
module, so each process writes its samples to shared files and ``/metrics`` aggregates them. Label values
are bounded: ``model`` is a configured backend name (or ``unknown``), never a raw client string.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from gateway.context import RequestContext

MULTIPROCESS = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
_OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1)

REQUESTS = Counter(
    "aligngate_requests", "Requests answered, by backend model, arm and HTTP status.", ["model", "arm", "status"]
)
DURATION = Histogram(
    "aligngate_request_duration_seconds", "Time from request arrival to the last byte sent.",
    ["model", "arm"], buckets=_LATENCY_BUCKETS,
)
TTFT = Histogram(
    "aligngate_ttft_seconds", "Time from request arrival to the first body byte sent (streams: first token).",
    ["model", "arm"], buckets=_LATENCY_BUCKETS,
)
OVERHEAD = Histogram(
    "aligngate_overhead_seconds", "Time spent in the gateway itself (upstream, helper and client waits excluded).",
    ["model", "arm"], buckets=_OVERHEAD_BUCKETS,
)
IN_FLIGHT = Gauge(
    "aligngate_in_flight", "Requests being served.", ["model"], multiprocess_mode="livesum"
)
UPSTREAM_ERRORS = Counter(
    "aligngate_upstream_errors",
    "Failed upstream attempts, by backend and status (an HTTP status, connect_error, timeout, stream_broken).",
    ["model", "status"],
)
HELPER_DURATION = Histogram(
    "aligngate_helper_duration_seconds", "Time a helper call took (rewriter: the rewrite; aligner: the correction).",
    ["helper"], buckets=_LATENCY_BUCKETS,
)
HELPER_FAILURES = Counter(
    "aligngate_helper_failures",
    "Helper calls that failed (reason: timeout, overloaded, error), whatever on_error then did (helper: rewriter, "
    "aligner, gate: the aligner's reward gate).",
    ["helper", "reason"],
)
HELPER_SKIPS = Counter(
    "aligngate_helper_skips",
    "Helper outputs a guard discarded, keeping the original (reason: empty, too_long_output, dropped_constraint, "
    "template_leak, repetition, ...).",
    ["helper", "reason"],
)
ALIGNER_SENTENCES = Counter(
    "aligngate_aligner_sentences",
    "Segments of answers corrected sentence by sentence (outcome: corrected; kept, by a guard; failed, the aligner "
    "failed on it; uncorrected, after an earlier failure; code, fenced code or no words, never sent).",
    ["outcome"],
)
GATE_DECISIONS = Counter(
    "aligngate_gate_decisions",
    "Corrections judged by a helper's reward gate (helper: aligner), by decision: corrected (served), raw (the "
    "backend's answer kept: a tie or a loss), failed (the gate failed; on_error decided).",
    ["helper", "decision"],
)
ALIGNER_SENTENCE_DURATION = Histogram(
    "aligngate_aligner_sentence_seconds", "Time the aligner took to correct one sentence.",
    buckets=_LATENCY_BUCKETS,
)

# Shadow mode (gateway/pipeline/shadow.py) has counters of its own: the live helper metrics above describe what
# clients were served, and a shadow run's failures or times must not blur them.
SHADOW_RUNS = Counter(
    "aligngate_shadow_runs",
    "Shadow runs of sampled control requests, by outcome: completed, helper_failed (a helper failed; the "
    "client was not affected), saturated (skipped: experiment.shadow.max_concurrent runs in flight), "
    "request_failed (skipped: the client's request failed), shutdown (skipped: the gateway was stopping), "
    "cancelled (still running when shutdown stopped waiting).",
    ["outcome"],
)
SHADOW_IN_FLIGHT = Gauge(
    "aligngate_shadow_in_flight", "Shadow runs in progress.", multiprocess_mode="livesum"
)
SHADOW_HELPER_DURATION = Histogram(
    "aligngate_shadow_helper_duration_seconds", "Time a helper call of a shadow run took.",
    ["helper"], buckets=_LATENCY_BUCKETS,
)
SHADOW_HELPER_FAILURES = Counter(
    "aligngate_shadow_helper_failures",
    "Helper calls of shadow runs that failed (reason: timeout, overloaded, error).",
    ["helper", "reason"],
)
SHADOW_HELPER_SKIPS = Counter(
    "aligngate_shadow_helper_skips",
    "Helper outputs of shadow runs that a guard discarded (reason: empty, too_long_output, ...).",
    ["helper", "reason"],
)

FEEDBACK = Counter(
    "aligngate_feedback", "Ratings received on POST /v1/feedback, by the rated request's arm and the rating (1, -1).",
    ["arm", "rating"],
)
PREFERENCES = Counter(
    "aligngate_preferences",
    "Pairwise preferences received on POST /v1/preferences, by the preferred request's arm (tie: neither).",
    ["preferred_arm"],
)
STORE_RECORDS = Counter(
    "aligngate_store_records",
    "Trace-store records by what became of them: written, spilled (the database was unavailable), replayed "
    "(from the spill file), rejected (refused by a working database, set aside), dropped (lost).",
    ["outcome"],
)

REJECTED = Counter(
    "aligngate_rejected",
    "Requests and connections refused by the gateway's own checks before any upstream saw them, by reason: "
    "non_finite_number, body_too_deep, n, max_tokens, messages (server.limits), body_timeout, header_timeout, "
    "header_too_large, concurrency (server.max_concurrent_requests).",
    ["reason"],
)
_rejected: dict[str, Counter] = {}
RATE_LIMITED = Counter(
    "aligngate_rate_limited",
    "Requests answered 429 by server.rate_limits, by the scope whose bucket was short (key, user) and its "
    "dimension (requests, tokens).",
    ["scope", "reason"],
)
RATE_LIMIT_ERRORS = Counter(
    "aligngate_rate_limit_errors",
    "Calls to a shared rate-limit store (Redis) that failed, by operation (acquire: the request was let through "
    "unchecked; settle: a token reservation was left as it was) and reason (timeout, connection, error; down: "
    "not tried, the store failed less than a second ago).",
    ["op", "reason"],
)


def rejected(reason: str) -> None:
    """Count a refusal of the gateway's own checks (``reason``: one of the fixed names above)."""
    child = _rejected.get(reason)
    if child is None:
        child = _rejected[reason] = REJECTED.labels(reason)
    child.inc()


def rate_limited(scope: str, reason: str) -> None:
    """Count a 429 of the rate limits (``scope``: key or user; ``reason``: requests or tokens)."""
    RATE_LIMITED.labels(scope, reason).inc()


def rate_limit_error(op: str, reason: str) -> None:
    """Count a failed call to the shared rate-limit store (``op``: acquire or settle; ``reason``: see above)."""
    RATE_LIMIT_ERRORS.labels(op, reason).inc()


def count_upstream_error(model: str, status: str) -> None:
    UPSTREAM_ERRORS.labels(model, status).inc()


# Labelled children of the per-request metrics, looked up once per label set: ``labels()`` costs a lock and
# several allocations per call, and every request makes six. The label sets are bounded (configured models,
# arms, HTTP statuses), and a child is the same object ``labels()`` returns.
_in_flight: dict[str, Gauge] = {}
_requests: dict[tuple[str, str, int], Counter] = {}
_timings: dict[tuple[str, str], tuple[Histogram, Histogram, Histogram]] = {}


def _in_flight_of(model: str) -> Gauge:
    child = _in_flight.get(model)
    if child is None:
        child = _in_flight[model] = IN_FLIGHT.labels(model)
    return child


def request_started(ctx: RequestContext) -> None:
    """Count a request in flight once its backend is known."""
    if ctx.model is not None and not ctx.in_flight_counted:
        ctx.in_flight_counted = True
        _in_flight_of(ctx.model).inc()


def request_finished(ctx: RequestContext, status: int, duration_s: float, overhead_s: float) -> None:
    model = ctx.model or "unknown"
    arm = ctx.arm or "none"
    if ctx.in_flight_counted:
        _in_flight_of(model).dec()
    counter = _requests.get((model, arm, status))
    if counter is None:
        counter = _requests[(model, arm, status)] = REQUESTS.labels(model, arm, str(status))
    counter.inc()
    timings = _timings.get((model, arm))
    if timings is None:
        timings = _timings[(model, arm)] = (
            DURATION.labels(model, arm), OVERHEAD.labels(model, arm), TTFT.labels(model, arm)
        )
    duration, overhead, ttft = timings
    duration.observe(duration_s)
    overhead.observe(overhead_s)
    if ctx.first_byte_s is not None and status < 400:
        ttft.observe(ctx.first_byte_s)


def render() -> tuple[bytes, str]:
    """The exposition text of every metric (aggregated across workers in multiprocess mode)."""
    if MULTIPROCESS:
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
