"""The ``usage`` of an aligned answer: what was delivered, and what the helpers spent (README "Arms and the pipeline").

On an aligning arm the client gets the correction, not the backend's answer, so ``usage.completion_tokens`` (and
``total_tokens``) count the delivered text: the backend's count, less each changed choice's share of it, plus the
tokens of what replaced it. A correction's tokens are the aligner engine's own count (the local engine's tokenizer,
or the remote server's ``usage``; for a correction cut at a stop sequence after the engine counted it, the count in
proportion to the characters kept). A choice's share of the backend's count is exact with one choice and an even
split with ``n`` > 1; sentences served as the backend wrote them (sentence by sentence) count their share of the
choice's backend tokens in proportion to their characters. ``prompt_tokens`` stays the backend's.

``usage.aligngate`` (an extension field; OpenAI SDKs keep unknown ``usage`` fields) says
``{"backend_completion_tokens", "rewriter": {"prompt_tokens", "completion_tokens"} | null, "aligner": {...} |
null}``: the backend's own count and the helpers' spending on the request (every call, kept or not), also in the
trace as ``helper_tokens``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from gateway.pipeline.trace import Trace
from models.aligner import AlignResult

__all__ = ["add_aligner_tokens", "delivered_usage"]


def add_aligner_tokens(trace: Trace, results: Sequence[AlignResult | None]) -> None:
    """Record what the aligner spent on ``results`` in ``trace.helper_tokens``."""
    done = [r for r in results if r is not None]
    if done:
        trace.helper_tokens["aligner"] = {
            "prompt_tokens": sum(r.helper_prompt_tokens for r in done),
            "completion_tokens": sum(r.helper_completion_tokens for r in done),
        }


def _served_tokens(share: float, result: AlignResult) -> float:
    """The tokens of a changed choice as delivered (see the module docstring)."""
    tokens = float(result.tokens or 0)
    if result.sentences and result.original:
        passed = sum(len(s.served) for s in result.sentences if not s.corrected)
        tokens += share * passed / len(result.original)
    return tokens


def delivered_usage(usage: Any, choices: int, results: Sequence[AlignResult | None], trace: Trace) -> Any:
    """``usage`` (the backend's, for ``choices`` choices) as delivered, given each text choice's ``results``
    (``None``: not corrected); unchanged when it is not a usage object with an integer ``completion_tokens``."""
    if not isinstance(usage, dict):
        return usage
    backend = usage.get("completion_tokens")
    if not isinstance(backend, int) or isinstance(backend, bool):
        return usage
    share = backend / max(choices, 1)
    delivered = float(backend)
    for result in results:
        if result is not None and (result.skipped_reason is None or result.finish_reason is not None):
            delivered += _served_tokens(share, result) - share
    out = dict(usage)
    out["completion_tokens"] = max(0, round(delivered))
    prompt = usage.get("prompt_tokens")
    if isinstance(prompt, int) and not isinstance(prompt, bool):
        out["total_tokens"] = prompt + out["completion_tokens"]
    out["aligngate"] = {"backend_completion_tokens": backend, **trace.helper_tokens}
    return out
