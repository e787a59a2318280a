"""The gateway's one router: exact paths to ``{method: endpoint}``, plain ASGI, each route registered once.

An endpoint is an ASGI app. The inference routes are raw-ASGI endpoints (the hot path: no request object, no
per-request layers); the low-rate routes are ``async fn(request) -> Response`` functions wrapped by
:func:`endpoint`. Either way an exception becomes the client's answer through the one mapping in
``gateway/errors.py`` (:func:`~gateway.errors.response_for`). An unknown path is a 404 and a method a path does not
take a 405 with ``Allow``, both in the OpenAI error shape, with the headers of the prefix the path is under when
one is given (``/ui``'s security headers on a 404 below ``/ui``); ``HEAD`` is served by a path's ``GET``. Paths
match exactly (``/v1/models/`` is not ``/v1/models``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.errors import response_for, route_error

Handler = Callable[[Request], Awaitable[Response]]


def endpoint(handler: Handler) -> ASGIApp:
    """An ASGI endpoint from ``async handler(request) -> Response``; its exceptions go through ``response_for``."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        try:
            response = await handler(Request(scope, receive))
        except Exception as exc:
            response = response_for(exc, scope.get("state", {}).get("ctx"))
        await response(scope, receive, send)

    app.__name__ = app.__qualname__ = handler.__name__
    return app


class Router:
    """Dispatches an HTTP request to the endpoint of its path and method."""

    __slots__ = ("prefix_headers", "table")

    def __init__(
        self, routes: Iterable[tuple[str, str, ASGIApp]], prefix_headers: Mapping[str, Mapping[str, str]] | None = None
    ) -> None:
        #: path → method → endpoint
        self.table: dict[str, dict[str, ASGIApp]] = {}
        #: prefix → headers every 404/405 at or below it carries
        self.prefix_headers = dict(prefix_headers or {})
        for method, path, app in routes:
            methods = self.table.setdefault(path, {})
            if method in methods:
                raise ValueError(f"route {method} {path} registered twice")
            methods[method] = app
            if method == "GET":
                methods.setdefault("HEAD", app)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        methods = self.table.get(path)
        method: str = scope["method"]
        if methods is None:
            response = route_error(404, method, path)
        else:
            app = methods.get(method)
            if app is not None:
                await app(scope, receive, send)
                return
            response = route_error(405, method, path, ", ".join(sorted(m for m in methods if m != "HEAD")))
        for prefix, headers in self.prefix_headers.items():
            if path == prefix or path.startswith(prefix + "/"):
                response.headers.update(headers)
        await response(scope, receive, send)
