"""The request middleware (pure ASGI, so it costs microseconds): request id, timing headers, metrics,
the access-log line, the cap on concurrent ``/v1/*`` requests (``server.max_concurrent_requests``: beyond it a
503 ``gateway_overloaded`` with ``Retry-After``; health and metrics are never capped), and the last-resort 500 for
an unexpected exception (logged, never shown).

Adds ``X-Request-Id`` (the client's own when it sends a sane one), ``X-Aligngate-Overhead-Ms`` and, once
an arm is known, ``X-Aligngate-Arm`` to every response. When a request has ended, its record (if the
inference service set one up) goes to the trace store.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway import metrics
from gateway.context import REQUEST_ID, RequestContext
from gateway.errors import GatewayBusy, internal_error_body, response_for

logger = logging.getLogger(__name__)
access_logger = logging.getLogger("aligngate.access")

_MAX_REQUEST_ID = 128
_METRIC_PREFIX = "/v1/"


def _request_id(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            if 0 < len(value) <= _MAX_REQUEST_ID and value.isascii():
                text: str = value.decode("ascii")
                if text.isprintable():
                    return text
            break
    return new_request_id()


#: Random bytes for request ids, read from the OS 4 KiB at a time (one system call per 409 ids instead of one each).
_POOL_BYTES = 4096
_pool = b""
_pos = 0


def _reset_pool() -> None:
    global _pool, _pos
    _pool, _pos = b"", 0


# a forked worker must not hand out the random bits its parent already holds
os.register_at_fork(after_in_child=_reset_pool)


def new_request_id() -> str:
    """A UUID version 7 (RFC 9562) in hex: 48 bits of Unix time in milliseconds, then 74 random bits from
    ``os.urandom``. Ids sort by time, so the trace store's primary-key index grows at its end: SQLite inserts a
    random (version 4) id about three times slower, and slower still as the table grows."""
    global _pool, _pos
    if _pos + 10 > len(_pool):
        _pool, _pos = os.urandom(_POOL_BYTES), 0
    rand = bytearray(_pool[_pos:_pos + 10])  # bytes 6-15 of the UUID
    _pos += 10
    rand[0] = rand[0] & 0x0F | 0x70  # version 7
    rand[2] = rand[2] & 0x3F | 0x80  # RFC 4122 variant
    return (time.time_ns() // 1_000_000).to_bytes(6, "big").hex() + rand.hex()


class RequestMiddleware:
    def __init__(self, app: ASGIApp, *, max_concurrent: int = 0) -> None:
        self.app = app
        #: Most ``/v1/*`` requests served at once by this process (0: no limit), and how many are now.
        self.max_concurrent = max_concurrent
        self.active = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        clock = time.perf_counter
        ctx = RequestContext(request_id=_request_id(scope), started=clock())
        scope.setdefault("state", {})["ctx"] = ctx
        rid_token = REQUEST_ID.set(ctx.request_id)
        status = 0
        rid = ctx.request_id.encode("ascii")

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers: list[Any] = list(message.get("headers", ()))
                headers.append((b"x-request-id", rid))
                headers.append((b"x-aligngate-overhead-ms", b"%.3f" % (ctx.overhead_s() * 1000)))
                if ctx.arm is not None:
                    headers.append((b"x-aligngate-arm", ctx.arm.encode("ascii")))
                if ctx.headers:
                    names = {name for name, _ in ctx.headers}
                    headers = [h for h in headers if bytes(h[0]).lower() not in names]
                    headers.extend(ctx.headers)
                message = {**message, "headers": headers}
                await send(message)
                return
            if ctx.first_byte_s is None and message.get("body"):
                ctx.first_byte_s = clock() - ctx.started
            t = clock()
            await send(message)
            ctx.client_s += clock() - t

        counted = False
        try:
            if self.max_concurrent and scope["path"].startswith(_METRIC_PREFIX):
                if self.active >= self.max_concurrent:
                    metrics.rejected("concurrency")
                    busy = GatewayBusy(
                        f"The gateway is serving its limit of {self.max_concurrent} concurrent requests; retry shortly."
                    )
                    await response_for(busy, ctx)(scope, receive, send_wrapper)
                    return
                self.active += 1
                counted = True
            await self.app(scope, receive, send_wrapper)
        except Exception:
            logger.exception("unhandled error on %s %s (request %s)", scope["method"], scope["path"], ctx.request_id)
            if status == 0:
                status = 500
                await send_wrapper({
                    "type": "http.response.start", "status": 500,
                    "headers": [(b"content-type", b"application/json")],
                })
                await send_wrapper({"type": "http.response.body", "body": internal_error_body()})
            else:
                ctx.outcome = ctx.outcome or "internal_error"
        finally:
            if counted:
                self.active -= 1
            self._finish(scope, ctx, status or 499)
            REQUEST_ID.reset(rid_token)

    @staticmethod
    def _finish(scope: Scope, ctx: RequestContext, status: int) -> None:
        now = time.perf_counter()
        duration = now - ctx.started
        overhead = ctx.overhead_s(now)
        if status >= 400 and ctx.outcome is None:  # an error status is never "ok"; endpoints set the error's code
            ctx.outcome = f"http_{status}"
        path: str = scope["path"]
        if path.startswith(_METRIC_PREFIX):
            metrics.request_finished(ctx, status, duration, overhead)
        capture = ctx.capture
        if capture is not None:  # the trace store: enqueues a reference, O(1)
            try:
                capture.sink.submit(ctx, status, duration, overhead)
            except Exception:
                logger.exception("could not record request %s", ctx.request_id)
        if access_logger.isEnabledFor(logging.INFO):
            client = scope.get("client")
            access_logger.info(
                '%s "%s %s" %d %.1fms rid=%s model=%s arm=%s stream=%s replica=%s overhead_ms=%.2f outcome=%s',
                client[0] if client else "-", scope["method"], path, status, duration * 1000, ctx.request_id,
                ctx.model or "-", ctx.arm or "-", int(ctx.stream), "-" if ctx.replica is None else ctx.replica,
                overhead * 1000, ctx.outcome or "ok",
            )
