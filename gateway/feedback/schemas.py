"""The request and response bodies of ``POST /v1/feedback`` (ratings) and ``POST /v1/preferences`` (pairwise)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictStr, field_validator

#: Longest comment or correction kept (characters).
MAX_TEXT = 100_000


class FeedbackRequest(BaseModel):
    """``{"request_id": "...", "rating": 1|-1, "comment"?: str, "correction"?: str}``."""

    model_config = ConfigDict(extra="forbid")

    #: The ``X-Request-Id`` of the rated response.
    request_id: StrictStr = Field(min_length=1, max_length=128)
    rating: int
    comment: StrictStr | None = Field(None, max_length=MAX_TEXT)
    #: A better answer, in the user's words (training data for the aligner).
    correction: StrictStr | None = Field(None, max_length=MAX_TEXT)

    @field_validator("rating", mode="before")
    @classmethod
    def _thumbs(cls, value: Any) -> int:
        # exactly the JSON integers 1 and -1: not true, 1.0 or "1"
        if type(value) is not int or value not in (1, -1):
            raise ValueError("rating must be the integer 1 (good) or -1 (bad)")
        return value


class FeedbackResponse(BaseModel):
    ok: bool = True
    request_id: str
    feedback_id: str


#: Which of the two compared answers: ``a``, ``b``, or neither better (``tie``).
Preferred = Literal["a", "b", "tie"]
#: Which of the two was shown on the left.
Side = Literal["a", "b"]


class PreferenceRequest(BaseModel):
    """``{"a": "<request id>", "b": "<request id>", "preferred": "a"|"b"|"tie", "left"?: "a"|"b", "comment"?: str}``."""

    model_config = ConfigDict(extra="forbid")

    #: The ``X-Request-Id`` of the two compared responses (two different requests).
    a: StrictStr = Field(min_length=1, max_length=128)
    b: StrictStr = Field(min_length=1, max_length=128)
    preferred: Preferred
    #: Which answer the person saw on the left (for position-bias analysis).
    left: Side | None = None
    comment: StrictStr | None = Field(None, max_length=MAX_TEXT)


class PreferenceResponse(BaseModel):
    ok: bool = True
    preference_id: str
    a: str
    b: str
