"""The routes ``/healthz`` (alive), ``/readyz`` (backends reachable; helper probes shown) and ``/metrics``."""

from __future__ import annotations

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp

from gateway import metrics
from gateway.ops.schemas import Health, HelperProbe
from gateway.ops.service import readiness
from gateway.routing import endpoint

_HEALTH = orjson.dumps(Health().model_dump())


async def healthz(request: Request) -> Response:
    return Response(_HEALTH, media_type="application/json")


async def readyz(request: Request) -> Response:
    result = await readiness(request.app.state.inference.backends)
    probes = getattr(request.app.state, "probes", None)
    if probes is not None:
        result.helpers = {
            name: HelperProbe(status=p.status, template=p.template, reason=p.reason, hint=p.hint, output=p.output,
                              ms=p.ms)
            for name, p in probes.results().items()
        }
    status = 200 if result.status == "ready" else 503
    return Response(orjson.dumps(result.model_dump(exclude_none=True)), status_code=status,
                    media_type="application/json")


async def prometheus_metrics(request: Request) -> Response:
    body, content_type = metrics.render()
    return Response(body, media_type=content_type)


ROUTES: list[tuple[str, str, ASGIApp]] = [
    ("GET", "/healthz", endpoint(healthz)),
    ("GET", "/readyz", endpoint(readyz)),
    ("GET", "/metrics", endpoint(prometheus_metrics)),
]
