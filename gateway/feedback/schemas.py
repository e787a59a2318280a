"""The feedback request and response bodies."""

from __future__ import annotations

from typing import Any

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
