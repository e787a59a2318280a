"""The trace object: what the pipeline did to a request (``aligngate`` field when ``X-Aligngate-Trace: 1``)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, SerializerFunctionWrapHandler, model_serializer

from models.aligner import SentenceResult


class HelperMs(BaseModel):
    rewriter: float | None = None
    aligner: float | None = None


class GateTrace(BaseModel):
    """The aligner's reward gate on one choice: the reward model's score of the backend's answer (``raw``) and of
    its correction, and which was served (``None`` scores: the gate failed, ``aligner_skipped`` says why)."""

    raw: float | None = None
    corrected: float | None = None
    decision: Literal["corrected", "raw"]


class SentenceTrace(BaseModel):
    """One segment of an answer corrected sentence by sentence: the backend's text (whitespace around it included),
    what the client got instead (``corrected``, ``None`` when it got the original), why not (``skipped``: ``code``,
    ``no_text``, a guard of ``models.aligner.SENTENCE_GUARDS``, ``failed:<reason>``, ``after_failure``,
    ``gate_kept_raw``, ``failed:gate_<reason>``), the aligner's milliseconds, and with the reward gate its verdict
    on the sentence (``gate``: the answer so far ending in the backend's sentence against it ending in the
    correction; absent when the sentence was not judged)."""

    original: str
    corrected: str | None = None
    skipped: str | None = None
    ms: float | None = None
    gate: GateTrace | None = None

    @model_serializer(mode="wrap")
    def _gate_only_when_judged(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        if data.get("gate") is None:
            data.pop("gate", None)
        return data

    @classmethod
    def of(cls, result: SentenceResult) -> SentenceTrace:
        return cls(original=result.original, corrected=result.served if result.corrected else None,
                   skipped=result.skipped, ms=round(result.elapsed_ms, 3) if result.elapsed_ms else None)


#: Per choice, like ``original_content``: one list of segments, or (``n`` > 1) one per choice (``None``: a
#: choice without text, such as tool calls).
Sentences = list[SentenceTrace] | list[list[SentenceTrace] | None]


def _no_helper_tokens() -> dict[str, dict[str, int] | None]:
    return {"rewriter": None, "aligner": None}


class Trace(BaseModel):
    """The README's trace object ("Arms and the pipeline"), plus why a helper left its input unchanged
    (``*_skipped``: a guard or a failure). ``sentences`` is there only when the aligner corrected sentence by
    sentence, ``gate`` only when the aligner's reward gate judged a correction."""

    request_id: str
    arm: str
    rewritten_prompt: str | None = None
    #: The backend's answer before correction: a string, or one per choice when ``n`` > 1.
    original_content: str | list[str | None] | None = None
    helper_ms: HelperMs = Field(default_factory=HelperMs)
    rewriter_skipped: str | None = None
    aligner_skipped: str | list[str | None] | None = None
    sentences: Sentences | None = None
    #: The reward gate per choice, like ``original_content`` (``None``: a choice it did not judge: no correction).
    gate: GateTrace | list[GateTrace | None] | None = None
    #: What each helper spent on the request (every call, kept or not): ``{"prompt_tokens", "completion_tokens"}``
    #: per helper, ``None`` for a helper that made no call.
    helper_tokens: dict[str, dict[str, int] | None] = Field(default_factory=_no_helper_tokens)

    def as_json(self) -> dict[str, Any]:
        data = self.model_dump()
        if self.sentences is None:
            del data["sentences"]
        if self.gate is None:
            del data["gate"]
        return data

