"""The OpenAI inference routes: ``POST /v1/chat/completions``, ``POST /v1/completions`` (raw-ASGI endpoints, the
work is in ``service.py``) and ``GET /v1/models``."""

from __future__ import annotations

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp

from gateway.inference.endpoint import InferenceEndpoint
from gateway.inference.service import InferenceService
from gateway.pipeline.pipeline import CHAT_PATH, COMPLETIONS_PATH
from gateway.routing import endpoint


async def list_models(request: Request) -> Response:
    service: InferenceService = request.app.state.inference
    models = service.models(request.headers.get("authorization"))
    return Response(orjson.dumps(models.model_dump()), media_type="application/json")


ROUTES: list[tuple[str, str, ASGIApp]] = [
    ("POST", "/v1" + CHAT_PATH, InferenceEndpoint(CHAT_PATH)),
    ("POST", "/v1" + COMPLETIONS_PATH, InferenceEndpoint(COMPLETIONS_PATH)),
    ("GET", "/v1/models", endpoint(list_models)),
]
