"""The routes of the web pages: the pages themselves (``pages.py``) and the JSON read API
``GET /ui/api/{info,traces,trace,experiment}`` (``api.py``).

Every answer of ``/ui/api/*`` is JSON with ``Cache-Control: no-store``, errors included (the OpenAI shape,
``gateway/errors.py``), and needs the API key when ``server.api_keys`` is set (the same check as ``/v1/*``).
Query parameters are checked by ``schemas.py`` (400 naming the parameter). ``server.ui: false`` removes every
route whose path :func:`~gateway.ui.pages.is_ui_path` (``gateway/app.py``); the static pages' routes
(``pages.py``) are part of :data:`ROUTES`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import orjson
from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp

from gateway.errors import BadRequest, from_validation_error, response_for
from gateway.routing import endpoint
from gateway.ui.api import UiApi
from gateway.ui.pages import PAGE_ROUTES
from gateway.ui.schemas import ExperimentQuery, NoQuery, TraceQuery, TracesQuery

Q = TypeVar("Q", bound=BaseModel)
JsonHandler = Callable[[Request, UiApi], Awaitable[BaseModel]]


def query(request: Request, schema: type[Q]) -> Q:
    """The query string checked against ``schema``: an empty value is an absent parameter, a repeated one a 400."""
    params: dict[str, str] = {}
    for key, value in request.query_params.multi_items():
        if key in params:
            raise BadRequest(f"Parameter '{key}' is given more than once.", param=key, code="invalid_value")
        if value != "":
            params[key] = value
    try:
        return schema.model_validate(params)
    except ValidationError as exc:
        raise from_validation_error(exc, params) from None


def json_endpoint(handler: JsonHandler) -> ASGIApp:
    """An endpoint answering ``handler``'s model as JSON, after the API key check; no answer is cached."""

    async def run(request: Request) -> Response:
        try:
            api: UiApi = request.app.state.ui
            api.auth.check(request.headers.get("authorization"))
            answer = await handler(request, api)
            response = Response(orjson.dumps(answer.model_dump(mode="json")), media_type="application/json")
        except Exception as exc:
            response = response_for(exc, request.scope.get("state", {}).get("ctx"))
        response.headers["Cache-Control"] = "no-store"
        return response

    run.__name__ = run.__qualname__ = handler.__name__
    return endpoint(run)


async def info(request: Request, api: UiApi) -> BaseModel:
    query(request, NoQuery)
    return api.info()


async def traces(request: Request, api: UiApi) -> BaseModel:
    return await api.traces(query(request, TracesQuery))


async def trace(request: Request, api: UiApi) -> BaseModel:
    return await api.trace(query(request, TraceQuery))


async def experiment(request: Request, api: UiApi) -> BaseModel:
    return await api.experiment(query(request, ExperimentQuery))


#: The pages (``pages.py``) and the JSON read API; ``is_ui_path`` tells ``server.ui: false`` which to leave out.
ROUTES: list[tuple[str, str, ASGIApp]] = [
    *PAGE_ROUTES,
    ("GET", "/ui/api/info", json_endpoint(info)),
    ("GET", "/ui/api/traces", json_endpoint(traces)),
    ("GET", "/ui/api/trace", json_endpoint(trace)),
    ("GET", "/ui/api/experiment", json_endpoint(experiment)),
]
