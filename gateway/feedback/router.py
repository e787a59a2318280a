"""Thin router for ``POST /v1/feedback``; the work is in ``service.py``."""

from __future__ import annotations

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from gateway.feedback.service import FeedbackService

router = APIRouter()


@router.post("/v1/feedback")
async def feedback(request: Request) -> Response:
    service: FeedbackService = request.app.state.feedback
    answer = await service.submit(request)
    return Response(orjson.dumps(answer.model_dump()), media_type="application/json")
