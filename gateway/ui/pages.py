"""The static pages of ``/ui``: the files of ``gateway/ui/static/`` (plain HTML, CSS and JavaScript modules,
nothing built), each at an exact route, read once at import.

``GET /ui`` and ``GET /ui/`` answer ``index.html``; every other file ``NAME`` answers at ``/ui/NAME``. Every
answer carries a strict Content-Security-Policy (scripts, styles and requests from the gateway itself only, no
inline script or style, no eval, no framing), ``X-Content-Type-Options: nosniff``, ``Referrer-Policy:
no-referrer``, ``Cache-Control: no-cache`` and an ``ETag`` (``If-None-Match`` with it gets a 304), so a browser
revalidates each file and a new gateway's pages are never mixed with an old one's.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp

from gateway.routing import endpoint

#: The Content-Security-Policy of every ``/ui`` answer.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
#: The headers every ``/ui`` answer carries (the pages', and the JSON API's under ``/ui/api``).
SECURITY_HEADERS: dict[str, str] = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}

#: Content types by file extension; a file of another kind is not served.
CONTENT_TYPES: dict[str, str] = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}

#: The URL prefix of the pages (and of the JSON API the other ``gateway/ui`` routes serve).
PREFIX = "/ui"


def is_ui_path(path: str) -> bool:
    """Whether ``path`` belongs to ``/ui`` (what ``server.ui: false`` turns off)."""
    return path == PREFIX or path.startswith(PREFIX + "/")


@dataclass(frozen=True, slots=True)
class StaticFile:
    name: str
    body: bytes
    content_type: str
    etag: str

    @classmethod
    def of(cls, name: str, body: bytes) -> StaticFile:
        suffix = name[name.rfind("."):] if "." in name else ""
        return cls(name, body, CONTENT_TYPES[suffix], '"' + hashlib.sha256(body).hexdigest()[:32] + '"')

    def headers(self) -> dict[str, str]:
        return {**SECURITY_HEADERS, "Cache-Control": "no-cache", "ETag": self.etag}

    async def serve(self, request: Request) -> Response:
        headers = self.headers()
        if self.etag in _etags(request.headers.get("if-none-match")):
            return Response(status_code=304, headers=headers)
        return Response(self.body, media_type=self.content_type, headers=headers)


def _etags(header: str | None) -> set[str]:
    """The entity tags of an ``If-None-Match`` header (weak ones compared as strong: the body is the same)."""
    if not header:
        return set()
    return {tag.strip().removeprefix("W/") for tag in header.split(",")}


def static_files() -> list[StaticFile]:
    """The files of ``gateway/ui/static/`` with a known content type, by name."""
    folder = resources.files("gateway.ui").joinpath("static")
    found = [
        StaticFile.of(entry.name, entry.read_bytes())
        for entry in folder.iterdir()
        if entry.is_file() and any(entry.name.endswith(ext) for ext in CONTENT_TYPES)
    ]
    return sorted(found, key=lambda f: f.name)


def _routes(files: list[StaticFile]) -> list[tuple[str, str, ASGIApp]]:
    routes: list[tuple[str, str, ASGIApp]] = []
    for file in files:
        app = endpoint(file.serve)
        paths = [PREFIX, PREFIX + "/"] if file.name == "index.html" else [f"{PREFIX}/{file.name}"]
        routes += [("GET", path, app) for path in paths]
    return routes


#: The routes of the pages: (method, path, endpoint); ``gateway/app.py`` adds them to ``ROUTES``.
PAGE_ROUTES: list[tuple[str, str, ASGIApp]] = _routes(static_files())
