"""The request side of an ASGI exchange, as the inference routes read it: the few headers they use and the body
(refused beyond a size limit, 413, or when it has not all arrived in time, 408). The client's disconnect while
an answer is awaited is watched for by ``gateway/respond.py`` (``until_disconnect``).

Raw ASGI rather than Starlette's ``Request``: one pass over the header list and no body iterator keep the
hot path cheap. The values are what Starlette's ``Request.headers.get`` would give (the first occurrence of
a name, decoded as latin-1).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass

from starlette.types import Receive

from gateway import metrics
from gateway.deadlines import deadlines
from gateway.errors import BadRequest, ClientDisconnected, PayloadTooLarge, RequestTimeout


@dataclass(slots=True)
class RequestHeaders:
    """The request headers the inference routes read (None: absent)."""

    authorization: str | None = None
    content_length: str | None = None
    #: ``X-Aligngate-User``, ``X-Aligngate-Arm``, ``X-Aligngate-Trace``.
    user: str | None = None
    arm: str | None = None
    trace: str | None = None

    @classmethod
    def of(cls, raw: Iterable[tuple[bytes, bytes]]) -> RequestHeaders:
        """From an ASGI scope's ``headers`` (lower-case names)."""
        h = cls()
        for name, value in raw:
            if name == b"authorization":
                if h.authorization is None:
                    h.authorization = value.decode("latin-1")
            elif name == b"content-length":
                if h.content_length is None:
                    h.content_length = value.decode("latin-1")
            elif name.startswith(b"x-aligngate-"):
                if name == b"x-aligngate-user":
                    if h.user is None:
                        h.user = value.decode("latin-1")
                elif name == b"x-aligngate-arm":
                    if h.arm is None:
                        h.arm = value.decode("latin-1")
                elif name == b"x-aligngate-trace" and h.trace is None:
                    h.trace = value.decode("latin-1")
        return h


async def read_body(receive: Receive, content_length: str | None, limit: int, timeout_s: float | None = None) -> bytes:
    """The request body, refusing more than ``limit`` bytes (413) without reading them all; a client that goes
    away meanwhile raises ``ClientDisconnected``, one that has not sent it all within ``timeout_s`` seconds (up to
    ``gateway.deadlines.TICK_S`` more) ``RequestTimeout`` (408; the answer closes the connection)."""
    if timeout_s is None:
        return await _read_body(receive, content_length, limit)
    # a coarse deadline (gateway/deadlines.py) rather than asyncio.timeout: no timer handle per request
    task = asyncio.current_task()
    assert task is not None
    fired = False

    def expire() -> None:
        nonlocal fired
        fired = True
        task.cancel()

    pending = deadlines()
    pending.add(task, timeout_s, expire)
    try:
        return await _read_body(receive, content_length, limit)
    except asyncio.CancelledError:
        if not fired:
            raise
        task.uncancel()
        metrics.rejected("body_timeout")
        raise RequestTimeout(f"The request body was not received within {timeout_s:g}s.") from None
    finally:
        pending.discard(task)


async def _read_body(receive: Receive, content_length: str | None, limit: int) -> bytes:
    if content_length is not None:
        try:
            size = int(content_length)
        except ValueError:
            raise BadRequest("Invalid Content-Length header.") from None
        if size > limit:
            raise PayloadTooLarge(f"Request body of {size} bytes exceeds the limit of {limit} bytes.")
    body = b""
    more: list[bytes] | None = None
    total = 0
    while True:
        message = await receive()
        kind = message["type"]
        if kind == "http.request":
            chunk: bytes = message.get("body", b"")
            if chunk:
                total += len(chunk)
                if total > limit:
                    raise PayloadTooLarge(f"Request body exceeds the limit of {limit} bytes.")
                if not body:
                    body = chunk
                elif more is None:
                    more = [body, chunk]
                else:
                    more.append(chunk)
            if not message.get("more_body", False):
                return body if more is None else b"".join(more)
        elif kind == "http.disconnect":
            raise ClientDisconnected()
