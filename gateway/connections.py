"""The HTTP/1.1 connections of ``aligngate serve``: uvicorn's httptools protocol, plus the limits it lacks.

uvicorn bounds how long an idle keep-alive connection stays open (``server.keep_alive_timeout_s``, its
``timeout_keep_alive``) and how many connections a worker takes (``server.max_connections``, its
``limit_concurrency``), but with httptools not how long a client may take to send a request's headers, nor how
large they may be (llhttp has no limit of its own; uvicorn's ``h11_max_incomplete_event_size`` applies to its h11
protocol only). :class:`GuardedHttpToolsProtocol` adds both, below ASGI, where no request exists yet:

* ``server.header_timeout_s``: a request's line and headers must be complete within this time, counted from the
  connection's start for its first request and from the first byte of each later one (an idle keep-alive
  connection is uvicorn's to close). A client that sent part of them is answered 408 ``request_timeout`` and
  disconnected, one that sent nothing is disconnected;
* ``server.max_header_bytes``: a longer request line plus headers is answered 431
  ``request_header_fields_too_large`` and disconnected, at once — bytes are counted as they arrive, so a header
  that never ends is caught as well.

A refused request pipelined behind others on its connection waits for their answers: they are answered as
usual, then the refusal is sent and the connection closed (nothing after the refused request is read).

Both cost a request well under a microsecond or two: the deadline is a coarse one (``gateway/deadlines.py``, no timer
handle per request), and the size is counted per received chunk, the exact size of the parsed headers being
worked out only for a request whose chunks exceed the limit.

Each refusal is counted in ``aligngate_rejected_total{reason}`` (``header_timeout``, ``header_too_large``) and written
to the access log. The limits are the settings ``aligngate serve`` hands its workers.
"""

from __future__ import annotations

import asyncio
import logging
from functools import cache
from typing import Any

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from gateway import metrics
from gateway.config import ServerSettings, settings_from_env
from gateway.deadlines import deadlines
from gateway.errors import GatewayError, HeadersTooLarge, RequestTimeout, raw_error_response

logger = logging.getLogger(__name__)
access_logger = logging.getLogger("aligngate.access")

#: What uvicorn's protocols are named by, for ``uvicorn.run(http=...)``.
PROTOCOL = "gateway.connections:GuardedHttpToolsProtocol"


@cache
def _server_settings() -> ServerSettings:
    return settings_from_env().server


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline for each request's headers and a cap on their size."""

    def __init__(
        self, config: Config, server_state: ServerState, app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        server = _server_settings()
        self._header_timeout_s = server.header_timeout_s
        self._max_header_bytes = server.max_header_bytes
        self._deadlines = deadlines(self.loop)
        #: Whether a header deadline is pending.
        self._deadline = False
        #: Between a request's first byte (or the connection's start) and the end of its headers.
        self._in_head = True
        #: Whether any byte of the current request arrived.
        self._head_started = False
        #: Bytes received since the current request began (whole chunks: an upper bound of its head's size), and
        #: the size of the chunk being parsed.
        self._head_received = 0
        self._chunk = 0
        self._too_large = False
        self._refused = False
        #: A refusal's answer waiting for the answers of the requests pipelined before it (b"": none to send).
        self._deferred: bytes | None = None

    # ------------------------------------------------------------------ the connection

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[arg-type]
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        self._chunk = len(data)
        if self._in_head:
            self._head_received += self._chunk
        super().data_received(data)
        if self._refused or self.transport.is_closing():
            return
        if self._in_head and self._head_received > self._max_header_bytes:
            self._too_large = True  # a head still incomplete, already too long
        if self._too_large:
            self._refuse(HeadersTooLarge(
                f"The request line and headers exceed the limit of {self._max_header_bytes} bytes.",
            ), "Request Header Fields Too Large", "header_too_large")

    # ------------------------------------------------------------------ parser callbacks

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._head_started = True
        self._head_received = self._chunk  # the chunk it began in, whole: an upper bound
        if not self._deadline:
            self._arm()

    def on_headers_complete(self) -> None:
        if self._too_large:  # a request pipelined after a refused one, in the same chunk
            return
        self._in_head = False
        self._disarm()
        if self._head_received > self._max_header_bytes and self._head_size() > self._max_header_bytes:
            self._too_large = True  # refused by data_received once the parser returns; the app never sees it
            return
        self._head_started = False
        super().on_headers_complete()

    def _head_size(self) -> int:
        """The parsed request line and headers, in bytes (as sent, give or take whitespace)."""
        return len(self.url) + 12 + sum(len(name) + len(value) + 4 for name, value in self.headers)

    def on_body(self, body: bytes) -> None:
        if not self._too_large:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if not self._too_large:
            super().on_message_complete()

    def on_response_complete(self) -> None:
        deferred = self._deferred
        if deferred is None or self.pipeline:  # no refusal waiting, or requests before it still to be answered
            super().on_response_complete()
            return
        # the last answer before the refused request has been sent: now the refusal, and the connection closes
        self._deferred = None
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        if deferred:
            self.transport.write(deferred)
        self.transport.close()

    # ------------------------------------------------------------------ refusals

    def _arm(self) -> None:
        self._deadlines.add(self, self._header_timeout_s, self._header_timeout)
        self._deadline = True

    def _disarm(self) -> None:
        if self._deadline:
            self._deadlines.discard(self)
            self._deadline = False

    def _header_timeout(self) -> None:
        self._deadline = False
        if self._refused or self.transport.is_closing():
            return
        error = RequestTimeout(f"The request headers were not received within {self._header_timeout_s:g}s.")
        self._refuse(error, "Request Timeout", "header_timeout", answer=self._head_started)

    def _refuse(self, error: GatewayError, reason: str, metric: str, *, answer: bool = True) -> None:
        """Answer ``error`` (unless ``answer`` is false) and close the connection. When requests pipelined before
        this one are still being answered, they are answered first (reading stops meanwhile: nothing more is
        parsed), then this answer is sent and the connection closed (``on_response_complete``)."""
        self._refused = True
        self._disarm()
        answer_bytes = raw_error_response(error.status, reason, error) if answer else b""
        if self.cycle is not None and not self.cycle.response_complete:
            self._deferred = answer_bytes
            self.flow.pause_reading()
        else:
            if answer_bytes:
                self.transport.write(answer_bytes)
            self.transport.close()
        metrics.rejected(metric)
        client = self.client
        access_logger.info('%s "- -" %s rid=- outcome=%s', client[0] if client else "-",
                           error.status if answer else "-", metric)
