"""Feedback on an earlier answer: checked against the trace store, recorded there, counted in metrics.

The rated request must exist: this process's recent requests are known at once (their rows may still be in
the write queue); otherwise the database is asked, and asked again for a short while (the row may be in
another worker's or replica's queue, written within ``store.flush_interval_s``) before the answer is 404.
A second rating of the same request is a new row: the history is kept, the latest counts.
"""

from __future__ import annotations

import asyncio
import time
import uuid

from starlette.requests import Request

from gateway import metrics
from gateway.auth import ApiKeyAuth
from gateway.errors import GatewayError, NotFound, parse_request
from gateway.feedback.schemas import FeedbackRequest, FeedbackResponse
from gateway.inference.receive import read_body
from gateway.store.store import Store, StoreUnavailable

#: Largest feedback body (a correction can be a long answer).
MAX_BODY = 1_000_000


class FeedbackUnavailable(GatewayError):
    status = 503
    type = "server_error"
    code = "store_unavailable"


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
        self.auth.check(request.headers.get("authorization"))
        raw = await read_body(request.receive, request.headers.get("content-length"), MAX_BODY, self.body_timeout_s)
        fb = parse_request(raw, FeedbackRequest)
        store = self.store
        if store is None:
            raise FeedbackUnavailable(
                "Feedback needs the trace store, which this gateway has disabled (store.enabled)."
            )
        arm = await self._arm_of(store, fb.request_id)
        if arm is None:
            raise NotFound(
                f"No request with id {fb.request_id!r}: send the X-Request-Id of a response of this gateway.",
                param="request_id", code="request_not_found",
            )
        feedback_id = uuid.uuid4().hex
        store.submit_feedback({
            "id": feedback_id, "request_id": fb.request_id, "time": time.time(), "rating": fb.rating,
            "comment": fb.comment, "correction": fb.correction,
        })
        metrics.FEEDBACK.labels(arm, str(fb.rating)).inc()
        return FeedbackResponse(request_id=fb.request_id, feedback_id=feedback_id)

    async def _arm_of(self, store: Store, request_id: str) -> str | None:
        arm = store.recent_arm(request_id)
        if arm is not None:
            return arm
        deadline = time.monotonic() + self.lookup_wait_s
        while True:
            try:
                arm = await store.find_request(request_id)
            except StoreUnavailable as exc:
                raise FeedbackUnavailable(
                    "The trace store is unavailable; the feedback was not recorded. Try again shortly."
                ) from exc
            if arm is not None:
                return arm
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            await asyncio.sleep(min(left, 0.1))
            arm = store.recent_arm(request_id)  # it may have finished here meanwhile
            if arm is not None:
                return arm
