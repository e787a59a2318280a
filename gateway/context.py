"""Per-request context: identity, timings and labels gathered while a request moves through the gateway.

Created by the request middleware, filled in by services, read back for the response headers, the
metrics and the access-log line.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from starlette.requests import Request


@dataclass(slots=True)
class RequestContext:
    request_id: str
    started: float  # time.perf_counter() at arrival
    #: Configured backend name once known (never a raw client string: it is a metric label).
    model: str | None = None
    arm: str | None = None
    stream: bool = False
    #: Seconds spent waiting on upstreams and helpers, and blocked writing to the client.
    upstream_s: float = 0.0
    client_s: float = 0.0
    first_byte_s: float | None = None
    replica: int | None = None
    #: Why a response failed after it started (stream error code), or "client_disconnected".
    outcome: str | None = None
    in_flight_counted: bool = False

    def overhead_s(self, now: float | None = None) -> float:
        """Time spent in the gateway itself so far: elapsed minus upstream, helper and client waits."""
        elapsed = (now if now is not None else time.perf_counter()) - self.started
        return max(elapsed - self.upstream_s - self.client_s, 0.0)


def get_context(request: Request) -> RequestContext:
    ctx: RequestContext = request.scope["state"]["ctx"]
    return ctx
