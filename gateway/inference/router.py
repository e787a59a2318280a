"""Thin router for the OpenAI inference routes; the work is in ``service.py``."""

from __future__ import annotations

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from gateway.inference.service import InferenceService

router = APIRouter()


def _service(request: Request) -> InferenceService:
    service: InferenceService = request.app.state.inference
    return service


@router.post("/v1/chat/completions")
async def chat_completions(request: Request) -> Response:
    return await _service(request).chat(request)


@router.post("/v1/completions")
async def completions(request: Request) -> Response:
    return await _service(request).completions(request)


@router.get("/v1/models")
async def list_models(request: Request) -> Response:
    models = _service(request).models(request)
    return Response(orjson.dumps(models.model_dump()), media_type="application/json")
