"""The raw-ASGI endpoint of ``POST /v1/chat/completions`` and ``POST /v1/completions``.

The hot path of the gateway: ``GatewayApp`` (``gateway/app.py``) hands these two routes straight to an
``InferenceEndpoint`` inside the request middleware, skipping FastAPI's routing, dependency injection and
middleware layers; the FastAPI router registers the same endpoints (for 405s and for apps built from the
routers alone), so both ways behave alike. The endpoint reads the headers it needs, lets
``InferenceService.serve`` answer, and sends the answer; errors get the OpenAI shape exactly as the app's
exception handlers (``gateway/errors.py``) would give them, and a client that went away is recorded as 499.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import ValidationError
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.context import RequestContext
from gateway.errors import CLIENT_CLOSED, ClientDisconnected, GatewayError, error_response, from_validation_error
from gateway.inference.receive import RequestHeaders

if TYPE_CHECKING:
    from gateway.inference.service import InferenceService


class InferenceEndpoint:
    """ASGI app of one inference route; the service is the app's ``state.inference``, the request context
    ``scope["state"]["ctx"]`` (set by ``RequestMiddleware``)."""

    __slots__ = ("path",)

    def __init__(self, path: str) -> None:
        #: ``/chat/completions`` or ``/completions`` (the upstream path).
        self.path = path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        service: InferenceService = scope["app"].state.inference
        ctx: RequestContext = scope["state"]["ctx"]
        response: ASGIApp
        try:
            response = await service.serve(ctx, self.path, RequestHeaders.of(scope["headers"]), receive)
        except GatewayError as exc:
            response = error_response(exc)
        except ValidationError as exc:
            response = error_response(from_validation_error(exc))
        except ClientDisconnected:
            ctx.outcome = "client_disconnected"
            response = Response(status_code=CLIENT_CLOSED)
        await response(scope, receive, send)
