"""What the inference service needs from a backend, remote (HTTP replicas) or local (in-process engine).

A backend takes the OpenAI request body as bytes and answers with OpenAI response bytes: whole
(``UpstreamResult``) or as an SSE byte stream (``StreamHandle``). The service never needs to know which.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

#: Response headers as they came: ``(name, value)`` byte pairs, names in the sender's case.
RawHeaders = tuple[tuple[bytes, bytes], ...]


@dataclass(slots=True)
class UpstreamResult:
    """A complete response: status, content type and the body bytes, untouched."""

    status: int
    content_type: str
    body: bytes
    #: Index of the replica that answered (0 for a local engine).
    replica: int
    #: The upstream's response headers (none for a local engine).
    headers: RawHeaders = ()


class StreamHandle(Protocol):
    """An open streamed (SSE) response; ``close`` must be called, and aborts the work when unfinished."""

    #: Index of the replica that answers.
    replica_index: int
    #: Seconds spent waiting on the backend inside ``chunks`` (for the gateway-overhead measure).
    waited_s: float
    #: The upstream's response headers (none for a local engine).
    headers: RawHeaders

    def chunks(self) -> AsyncIterator[bytes]: ...

    def close(self, complete: bool = False) -> None:
        """Release the stream (idempotent). ``complete``: the answer has ended (``[DONE]`` was read), so what the
        upstream still sends need not be read by anyone; otherwise the upstream's work is aborted."""
        ...


class Backend(Protocol):
    name: str
    #: Model name the backend serves when it differs from ``name`` (the request's field is rewritten).
    upstream_model: str | None

    async def fetch(self, path: str, body: bytes) -> UpstreamResult: ...

    async def open_stream(self, path: str, body: bytes) -> StreamHandle | UpstreamResult: ...

    async def readiness(self) -> tuple[int, int]:
        """``(replicas answering now, replicas)``."""
        ...

    async def close(self) -> None: ...
