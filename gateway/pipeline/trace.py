"""The trace object: what the pipeline did to a request (``aligngate`` field when ``X-Aligngate-Trace: 1``)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class HelperMs(BaseModel):
    rewriter: float | None = None
    aligner: float | None = None


class Trace(BaseModel):
    """The README's trace object ("Arms and the pipeline"), plus why a helper left its input unchanged
    (``*_skipped``: a guard or a failure)."""

    request_id: str
    arm: str
    rewritten_prompt: str | None = None
    #: The backend's answer before correction: a string, or one per choice when ``n`` > 1.
    original_content: str | list[str | None] | None = None
    helper_ms: HelperMs = Field(default_factory=HelperMs)
    rewriter_skipped: str | None = None
    aligner_skipped: str | list[str | None] | None = None

    def as_json(self) -> dict[str, Any]:
        return self.model_dump()
