"""Thin router for the OpenAI inference routes; the work is in ``service.py``.

The two POST routes are raw ASGI endpoints (``endpoint.py``): ``GatewayApp`` serves them without going
through this router, which registers them too (so that other methods get a 405, and an app built from the
routers alone serves them the same way).
"""

from __future__ import annotations

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.inference.endpoint import InferenceEndpoint
from gateway.inference.service import CHAT_PATH, COMPLETIONS_PATH, InferenceService

#: The raw-ASGI fast-path routes: full path → endpoint.
ENDPOINTS: dict[str, InferenceEndpoint] = {
    "/v1" + CHAT_PATH: InferenceEndpoint(CHAT_PATH),
    "/v1" + COMPLETIONS_PATH: InferenceEndpoint(COMPLETIONS_PATH),
}

router = APIRouter()
for _path, _endpoint in ENDPOINTS.items():
    router.routes.append(Route(_path, _endpoint, methods=["POST"]))


def _service(request: Request) -> InferenceService:
    service: InferenceService = request.app.state.inference
    return service


@router.get("/v1/models")
async def list_models(request: Request) -> Response:
    models = _service(request).models(request.headers.get("authorization"))
    return Response(orjson.dumps(models.model_dump()), media_type="application/json")
