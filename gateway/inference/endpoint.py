"""The raw-ASGI endpoint of ``POST /v1/chat/completions`` and ``POST /v1/completions``: the gateway's hot path.

The router (``gateway/routing.py``) hands these two routes straight to an ``InferenceEndpoint``: no request object
and no per-request layers beyond the request middleware. The endpoint reads the headers it needs, lets
``InferenceService.serve`` answer, and sends the answer; an exception becomes the client's answer through the
one mapping of ``gateway/errors.py``, and a client that went away is recorded as 499. The request's ``outcome`` (access
log, trace store) is the error's code, or, for an upstream's error relayed as it came, the code in its body.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.context import RequestContext
from gateway.errors import response_for
from gateway.inference.receive import RequestHeaders
from gateway.respond import relayed_outcome

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
        except Exception as exc:
            response = response_for(exc, ctx)
        else:
            if isinstance(response, Response) and response.status_code >= 400 and ctx.outcome is None:
                ctx.outcome = relayed_outcome(bytes(response.body))  # an upstream's (or local engine's) own error
        await response(scope, receive, send)
