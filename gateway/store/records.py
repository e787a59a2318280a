"""Turning a finished request's context into a ``requests`` row (in the store's writer, off the request path),
and a shadow run into a ``shadow_runs`` row.

The hot path left references only (``Capture``): the client's body, the upstream's answer bytes or the
relayed SSE pieces, the pipeline's trace. Here they are parsed once: the messages, choice 0's answer before
and after correction, the token counts, the aligner's reward gate on choice 0 (``gate_*``). With ``log_bodies``
off every text field stays empty.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

from gateway.context import Capture, RequestContext
from models.wire.read import choice_text, usage_counts
from models.wire.sse import iter_events


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def _first(value: Any) -> Any:
    """Choice 0 of a per-choice trace value (a list when ``n`` > 1)."""
    if isinstance(value, list):
        return value[0] if value else None
    return value


def _loads(raw: bytes | None) -> Any:
    if not raw:
        return None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None


def _whole_answer(raw: bytes | None, chat: bool, want_text: bool) -> tuple[str | None, int | None, int | None]:
    data = _loads(raw)
    if not isinstance(data, dict):
        return None, None, None
    text = None
    if want_text:
        choices = data.get("choices")
        if isinstance(choices, list):
            text = next((choice_text(c, chat) for c in choices if isinstance(c, dict) and c.get("index", 0) == 0), None)
    return (text, *usage_counts(data))


def _streamed_answer(chunks: list[bytes], chat: bool, want_text: bool) -> tuple[str | None, int | None, int | None]:
    """Choice 0's text concatenated from relayed SSE pieces, and the usage chunk's counts."""
    parts: list[str] = []
    prompt_tokens = completion_tokens = None
    try:
        events = list(iter_events(b"".join(chunks)))
    except UnicodeDecodeError:
        return None, None, None
    for _, data in events:
        if data == "[DONE]":
            continue
        event = _loads(data.encode())
        if not isinstance(event, dict):
            continue
        p, c = usage_counts(event)
        if p is not None or c is not None:
            prompt_tokens, completion_tokens = p, c
        if not want_text:
            continue
        for choice in event.get("choices") or ():
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            piece = choice_text(choice, chat, streamed=True)
            if piece is not None:
                parts.append(piece)
    return ("".join(parts) if want_text and parts else None), prompt_tokens, completion_tokens


def _messages(cap: Capture) -> Any:
    data = _loads(cap.request_body)
    if not isinstance(data, dict):
        return None
    if cap.endpoint == "chat":
        return data.get("messages")
    prompt = data.get("prompt")
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt


def request_data(raw: bytes | None) -> dict[str, Any] | None:
    """A request body as JSON (None when it does not parse into an object)."""
    data = _loads(raw)
    return data if isinstance(data, dict) else None


def relayed_answer(cap: Capture) -> str | None:
    """Choice 0's text of an answer relayed as the upstream sent it (``response_body`` or the SSE ``chunks``):
    what a client on the control arm got. None when it has no text (tool calls, an error)."""
    chat = cap.endpoint == "chat"
    if cap.response_body is not None:
        return _whole_answer(cap.response_body, chat, True)[0]
    if cap.chunks:
        return _streamed_answer(cap.chunks, chat, True)[0]
    return None


def shadow_row(
    request_id: str, experiment: str, arm: str, finished: float, *, bodies: bool, skipped: str | None = None,
    rewritten_prompt: str | None = None, corrected: str | None = None, rewriter_ms: float | None = None,
    aligner_ms: float | None = None, rewriter_skipped: str | None = None, aligner_skipped: str | None = None,
    gate_raw_score: float | None = None, gate_corrected_score: float | None = None, gate_decision: str | None = None,
) -> dict[str, Any]:
    """The ``shadow_runs`` row of a shadow run (``finished``: wall-clock time at its end); with ``bodies`` off
    (``store.log_bodies``) the texts stay empty."""
    return {
        "id": request_id,
        "time": round(finished, 6),
        "experiment": experiment,
        "arm": arm,
        "skipped": skipped,
        "rewritten_prompt": rewritten_prompt if bodies else None,
        "corrected": corrected if bodies else None,
        "rewriter_ms": rewriter_ms,
        "aligner_ms": aligner_ms,
        "rewriter_skipped": rewriter_skipped,
        "aligner_skipped": aligner_skipped,
        "gate_raw_score": gate_raw_score,
        "gate_corrected_score": gate_corrected_score,
        "gate_decision": gate_decision,
    }


def hash_key(user_key: str) -> str:
    return hashlib.sha256(user_key.encode("utf-8")).hexdigest()


def request_row(
    ctx: RequestContext, status: int, duration_s: float, overhead_s: float, finished: float
) -> dict[str, Any]:
    """The ``requests`` row of a finished request (``finished``: wall-clock time at its end)."""
    cap = ctx.capture
    assert cap is not None
    bodies = cap.bodies
    chat = cap.endpoint == "chat"
    trace = cap.trace
    raw_answer, final_answer = cap.raw_answer, cap.final_answer
    prompt_tokens, completion_tokens = cap.prompt_tokens, cap.completion_tokens
    if status < 400 and final_answer is None and (cap.response_body is not None or cap.chunks):
        # relayed as the upstream sent it: before and after correction are the same text
        if cap.response_body is not None:
            text, p, c = _whole_answer(cap.response_body, chat, bodies)
        else:
            text, p, c = _streamed_answer(cap.chunks, chat, bodies)
        final_answer = text
        if raw_answer is None:
            raw_answer = text
        if prompt_tokens is None and completion_tokens is None:
            prompt_tokens, completion_tokens = p, c
    helper_ms = getattr(trace, "helper_ms", None)
    return {
        "id": ctx.request_id,
        "time": round(finished - duration_s, 6),
        "experiment": cap.experiment,
        "arm": ctx.arm or "control",
        "arm_forced": cap.arm_forced,
        "user_source": cap.user_source,
        "user_key_hash": hash_key(cap.user_key) if cap.user_key is not None else None,
        "bucket": cap.bucket,
        "model": ctx.model or "unknown",
        "endpoint": cap.endpoint,
        "stream": ctx.stream,
        "status": status,
        "outcome": ctx.outcome,
        "messages": _messages(cap) if bodies else None,
        "rewritten_prompt": getattr(trace, "rewritten_prompt", None) if bodies else None,
        "raw_answer": raw_answer if bodies else None,
        "final_answer": final_answer if bodies else None,
        "latency_ms": _ms(duration_s),
        "ttft_ms": _ms(ctx.first_byte_s),
        "overhead_ms": _ms(overhead_s),
        "rewriter_ms": getattr(helper_ms, "rewriter", None),
        "aligner_ms": getattr(helper_ms, "aligner", None),
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "rewriter_skipped": _first(getattr(trace, "rewriter_skipped", None)),
        "aligner_skipped": _first(getattr(trace, "aligner_skipped", None)),
        **gate_fields(_first(getattr(trace, "gate", None))),
    }


def gate_fields(gate: Any) -> dict[str, Any]:
    """The ``gate_*`` columns of the reward gate's verdict on a choice (``pipeline.trace.GateTrace``; None: not
    judged)."""
    return {
        "gate_raw_score": getattr(gate, "raw", None),
        "gate_corrected_score": getattr(gate, "corrected", None),
        "gate_decision": getattr(gate, "decision", None),
    }
