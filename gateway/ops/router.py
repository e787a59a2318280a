"""Thin router for ``/healthz`` (alive), ``/readyz`` (backends reachable) and ``/metrics``."""

from __future__ import annotations

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from gateway import metrics
from gateway.ops.schemas import Health
from gateway.ops.service import readiness

router = APIRouter()

_HEALTH = orjson.dumps(Health().model_dump())


@router.get("/healthz")
async def healthz() -> Response:
    return Response(_HEALTH, media_type="application/json")


@router.get("/readyz")
async def readyz(request: Request) -> Response:
    result = await readiness(request.app.state.inference.backends)
    status = 200 if result.status == "ready" else 503
    return Response(orjson.dumps(result.model_dump()), status_code=status, media_type="application/json")


@router.get("/metrics")
async def prometheus_metrics() -> Response:
    body, content_type = metrics.render()
    return Response(body, media_type=content_type)
