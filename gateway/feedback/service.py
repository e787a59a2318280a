"""What people say about earlier answers, checked against the trace store, recorded there, counted in metrics.

Two kinds, one machinery (API key, body reading, request look-up, the store's write queue):

* ``POST /v1/feedback`` — a rating (and comment, correction) of one answer. A second rating of the same request is
  a new row: the history is kept, the latest counts.
* ``POST /v1/preferences`` — a pairwise preference: a person compared the answers of two requests (``a`` and
  ``b``) and preferred one, or neither (``tie``); ``left`` says which one they saw on the left. Both requests'
  arms are recorded with it. Every preference is a row of its own.

A request named must exist: this process's recent requests are known at once (their rows may still be in the
write queue); otherwise the database is asked, and asked again for a short while (the row may be in another
worker's or replica's queue, written within ``store.flush_interval_s``) before the answer is 404
``request_not_found`` naming the field. Without the store, or while it cannot tell, the answer is 503
``store_unavailable``. Rows go through the store's queue, spill and replay (insert-or-ignore by id).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import TypeVar

from pydantic import BaseModel
from starlette.requests import Request

from gateway import metrics
from gateway.auth import ApiKeyAuth
from gateway.config import ARMS
from gateway.errors import BadRequest, NotFound, StoreUnavailableError, parse_request
from gateway.feedback.schemas import FeedbackRequest, FeedbackResponse, PreferenceRequest, PreferenceResponse
from gateway.inference.receive import read_body
from gateway.store.store import Store, StoreUnavailable

#: Largest feedback body (a correction can be a long answer).
MAX_BODY = 1_000_000

B = TypeVar("B", bound=BaseModel)


class FeedbackUnavailable(StoreUnavailableError):
    """Feedback or a preference cannot be recorded: no store, or it cannot tell now (503)."""


class FeedbackService:
    def __init__(
        self, store: Store | None, auth: ApiKeyAuth, *, lookup_wait_s: float | None = None,
        body_timeout_s: float | None = None,
    ) -> None:
        self.store = store
        self.auth = auth
        #: Longest wait for the whole request body (``server.body_timeout_s``).
        self.body_timeout_s = body_timeout_s
        #: How long a request id unknown to the database is looked for again before the 404.
        self.lookup_wait_s = (
            lookup_wait_s if lookup_wait_s is not None
            else (min(3 * store.settings.flush_interval_s, 5.0) if store is not None else 0.0)
        )

    async def submit(self, request: Request) -> FeedbackResponse:
        """``POST /v1/feedback``: record a rating of one answer."""
        fb = await self._read(request, FeedbackRequest)
        store = self._store("Feedback")
        arm = await self._arm_of(store, fb.request_id, "request_id")
        feedback_id = uuid.uuid4().hex
        store.submit_feedback({
            "id": feedback_id, "request_id": fb.request_id, "time": time.time(), "rating": fb.rating,
            "comment": fb.comment, "correction": fb.correction,
        })
        metrics.FEEDBACK.labels(arm, str(fb.rating)).inc()
        return FeedbackResponse(request_id=fb.request_id, feedback_id=feedback_id)

    async def prefer(self, request: Request) -> PreferenceResponse:
        """``POST /v1/preferences``: record which of two answers a person preferred."""
        pref = await self._read(request, PreferenceRequest)
        if pref.a == pref.b:
            raise BadRequest("'a' and 'b' must be two different requests.", param="b", code="invalid_value")
        store = self._store("A preference")
        found = await asyncio.gather(
            self._arm_of(store, pref.a, "a"), self._arm_of(store, pref.b, "b"), return_exceptions=True
        )
        arms: list[str] = []
        for result in found:  # a's error first, then b's
            if isinstance(result, BaseException):
                raise result
            arms.append(result)
        arm_a, arm_b = arms
        preference_id = uuid.uuid4().hex
        store.submit_preference({
            "id": preference_id, "time": time.time(), "request_a": pref.a, "request_b": pref.b, "arm_a": arm_a,
            "arm_b": arm_b, "preferred": pref.preferred, "left": pref.left, "comment": pref.comment,
        })
        winner = "tie" if pref.preferred == "tie" else (arm_a if pref.preferred == "a" else arm_b)
        metrics.PREFERENCES.labels(winner if winner == "tie" or winner in ARMS else "other").inc()
        return PreferenceResponse(preference_id=preference_id, a=pref.a, b=pref.b)

    async def _read(self, request: Request, schema: type[B]) -> B:
        """The API key checked, the body read (``MAX_BODY``, ``body_timeout_s``) and validated (400s)."""
        self.auth.check(request.headers.get("authorization"))
        raw = await read_body(request.receive, request.headers.get("content-length"), MAX_BODY, self.body_timeout_s)
        return parse_request(raw, schema)

    def _store(self, what: str) -> Store:
        if self.store is None:
            raise FeedbackUnavailable(
                f"{what} needs the trace store, which this gateway has disabled (store.enabled)."
            )
        return self.store

    async def _arm_of(self, store: Store, request_id: str, param: str) -> str:
        """The arm of request ``request_id``; 404 naming ``param`` when there is none, 503 when the store cannot
        tell."""
        arm = store.recent_arm(request_id)
        if arm is not None:
            return arm
        deadline = time.monotonic() + self.lookup_wait_s
        while True:
            try:
                arm = await store.find_request(request_id)
            except StoreUnavailable as exc:
                raise FeedbackUnavailable(
                    "The trace store is unavailable; nothing was recorded. Try again shortly."
                ) from exc
            if arm is not None:
                return arm
            left = deadline - time.monotonic()
            if left <= 0:
                raise NotFound(
                    f"No request with id {request_id!r}: send the X-Request-Id of a response of this gateway.",
                    param=param, code="request_not_found",
                )
            await asyncio.sleep(min(left, 0.1))
            arm = store.recent_arm(request_id)  # it may have finished here meanwhile
            if arm is not None:
                return arm
