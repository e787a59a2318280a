"""The routes ``POST /v1/feedback`` and ``POST /v1/preferences``; the work is in ``service.py``."""

from __future__ import annotations

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp

from gateway.feedback.service import FeedbackService
from gateway.routing import endpoint


async def feedback(request: Request) -> Response:
    service: FeedbackService = request.app.state.feedback
    answer = await service.submit(request)
    return Response(orjson.dumps(answer.model_dump()), media_type="application/json")


async def preferences(request: Request) -> Response:
    service: FeedbackService = request.app.state.feedback
    answer = await service.prefer(request)
    return Response(orjson.dumps(answer.model_dump()), media_type="application/json")


ROUTES: list[tuple[str, str, ASGIApp]] = [
    ("POST", "/v1/feedback", endpoint(feedback)),
    ("POST", "/v1/preferences", endpoint(preferences)),
]
