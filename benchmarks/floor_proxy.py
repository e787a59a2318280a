"""The floor: the least an ASGI pass-through proxy can do, for ``benchmarks/proxy_capacity.py`` to measure against.

A raw ASGI app (no framework, no parsing, no validation) that reads the request body, POSTs it unchanged to
``FLOOR_UPSTREAM`` + the path after ``/v1`` with one shared ``aiohttp`` session, and copies the status, the
content type and the body chunks back as they arrive; ``/healthz`` answers 200. Served the way aligngate is
(uvicorn, uvloop, httptools, no access log):

    FLOOR_UPSTREAM=http://127.0.0.1:9000/v1 python -m uvicorn floor_proxy:app --app-dir benchmarks \\
        --loop uvloop --http httptools --no-access-log --port 8100
"""

from __future__ import annotations

import os
from typing import Any

import aiohttp

UPSTREAM = os.environ.get("FLOOR_UPSTREAM", "http://127.0.0.1:9000/v1")
_session: aiohttp.ClientSession | None = None

Receive = Any
Send = Any


async def _lifespan(receive: Receive, send: Send) -> None:
    global _session
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            _session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            if _session is not None:
                await _session.close()
            await send({"type": "lifespan.shutdown.complete"})
            return


async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    body = b""
    more = True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    if scope["path"] == "/healthz" or _session is None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"ok"})
        return
    url = UPSTREAM + scope["path"].removeprefix("/v1")
    async with _session.post(url, data=body, headers={"Content-Type": "application/json"}) as upstream:
        kind = upstream.headers.get("Content-Type", "application/json").encode()
        await send({"type": "http.response.start", "status": upstream.status, "headers": [(b"content-type", kind)]})
        async for chunk in upstream.content.iter_any():
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
    await send({"type": "http.response.body", "body": b""})
