"""A remote backend: replicas of an OpenAI-compatible server behind one model name.

``RemoteBackend.fetch`` (whole response) and ``RemoteBackend.open_stream`` (streamed response) send a
request body to the least-busy replica and retry connect errors and 502/503/504 on another replica, with
backoff when a replica must be tried twice, as long as nothing has gone to the client. The upstream API key
comes from the environment variable the config names and is only ever put in the outgoing header.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from collections.abc import AsyncIterator, Callable

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from gateway.config import BackendSettings
from gateway.errors import GatewayError, UpstreamBroken, UpstreamTimeout, UpstreamUnavailable
from gateway.upstream.pool import Replica, ReplicaPool
from gateway.upstream.protocol import UpstreamResult
from models.wire.errors import RETRY_STATUSES

logger = logging.getLogger(__name__)

#: How long the end of a complete stream's body (after ``[DONE]``) is waited for, in the background, so that its
#: connection can be reused; an upstream that takes longer has its connection closed.
DRAIN_S = 1.0
BACKOFF_BASE_S = 0.05
BACKOFF_MAX_S = 2.0
PROBE_TIMEOUT_S = 5.0

#: Called once per failed attempt with (backend name, reason: an HTTP status or "connect_error"/"timeout").
ErrorHook = Callable[[str, str], None]


class UpstreamStream:
    """An open upstream response being streamed; ``close`` must be called (it releases the replica)."""

    __slots__ = ("_backend", "_closed", "_resp", "headers", "replica", "replica_index", "status", "waited_s")

    def __init__(self, backend: RemoteBackend, replica: Replica, resp: aiohttp.ClientResponse) -> None:
        self._backend = backend
        self._resp = resp
        self._closed = False
        self.replica = replica
        self.replica_index = replica.index
        self.status = resp.status
        self.headers = resp.raw_headers
        #: Seconds spent waiting on the upstream inside ``chunks`` (for the gateway-overhead measure).
        self.waited_s = 0.0

    async def chunks(self) -> AsyncIterator[bytes]:
        """Raw body bytes as they arrive; transport failures become ``UpstreamBroken``/``UpstreamTimeout``."""
        content = self._resp.content
        clock = time.perf_counter
        try:
            while True:
                t = clock()
                try:
                    chunk = await content.readany()
                finally:  # a wait that ends in a timeout, a cut or a cancellation is upstream time too
                    self.waited_s += clock() - t
                if not chunk:
                    return
                yield chunk
        except aiohttp.SocketTimeoutError as exc:
            self._backend.on_error(self._backend.name, "timeout")
            raise UpstreamTimeout(
                f"Backend '{self._backend.name}' sent nothing for {self._backend.settings.timeout_s:g}s."
            ) from exc
        except (aiohttp.ClientError, OSError) as exc:
            self._backend.on_error(self._backend.name, "stream_broken")
            logger.warning("backend %s replica %d (%s) broke off a stream: %s", self._backend.name,
                           self.replica.index, self.replica.url, _describe(exc))
            raise UpstreamBroken(f"Backend '{self._backend.name}' broke off the response mid-stream.") from exc

    def close(self, complete: bool = False) -> None:
        if self._closed:
            return
        self._closed = True
        self.replica.in_flight -= 1
        if self._resp.content.at_eof():
            self._resp.release()
        elif complete:  # the answer is whole; the body's end is on its way: read it, keep the connection
            task = asyncio.get_running_loop().create_task(_drain(self._resp))
            _draining.add(task)
            task.add_done_callback(_draining.discard)
        else:  # unfinished (client went away, or an error): drop the connection, which aborts the upstream
            self._resp.close()


#: Background drains in flight (referenced so they are not collected).
_draining: set[asyncio.Task[None]] = set()


async def _drain(resp: aiohttp.ClientResponse) -> None:
    """Read the rest of a complete stream's body for up to ``DRAIN_S``, then release its connection to the pool
    (or close it, when the upstream keeps it open longer or breaks it)."""
    try:
        async with asyncio.timeout(DRAIN_S):
            while await resp.content.readany():
                pass
    except (TimeoutError, aiohttp.ClientError, OSError):
        resp.close()
        return
    except asyncio.CancelledError:
        resp.close()
        raise
    resp.release()


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) < 200 else text[:200] + "…"


def _ignore_error(backend: str, reason: str) -> None:
    return None


class RemoteBackend:
    """Replicas of one OpenAI-compatible server, reached through the shared session."""

    def __init__(
        self, settings: BackendSettings, session: aiohttp.ClientSession, on_error: ErrorHook = _ignore_error
    ) -> None:
        self.settings = settings
        self.name = settings.name
        self.upstream_model = settings.upstream_model
        self.session = session
        self.on_error = on_error
        self.pool = ReplicaPool(
            settings.name, settings.urls, eject_after=settings.eject_after, eject_s=settings.eject_s,
            probe=self.probe,
        )
        self.headers: dict[str, str] = {"Content-Type": "application/json"}
        if settings.api_key_env:
            key = os.environ.get(settings.api_key_env)
            if key:
                self.headers["Authorization"] = f"Bearer {key}"
            else:
                logger.warning(
                    "backend %s: environment variable %s (api_key_env) is not set; calling it without a key",
                    settings.name, settings.api_key_env,
                )
        self._request_headers = CIMultiDict(self.headers)
        #: Parsed request URLs by (replica index, path): parsing a URL string costs more than the look-up.
        self._urls: dict[tuple[int, str], URL] = {}
        self.timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=settings.connect_timeout_s, sock_read=settings.timeout_s
        )
        self._probe_timeout = aiohttp.ClientTimeout(
            total=PROBE_TIMEOUT_S, sock_connect=min(settings.connect_timeout_s, PROBE_TIMEOUT_S)
        )

    async def fetch(self, path: str, body: bytes) -> UpstreamResult:
        """POST ``body`` to ``path`` and read the whole response, retrying while allowed."""
        result = await self._request(path, body, stream=False)
        assert isinstance(result, UpstreamResult)
        return result

    async def open_stream(self, path: str, body: bytes) -> UpstreamStream | UpstreamResult:
        """POST ``body`` and return once response headers arrive.

        A 2xx answer comes back as an open ``UpstreamStream``; an error status comes back read in full as
        an ``UpstreamResult`` (after retries, for 502/503/504), so the caller can relay it as plain JSON.
        """
        return await self._request(path, body, stream=True)

    async def _request(self, path: str, body: bytes, *, stream: bool) -> UpstreamStream | UpstreamResult:
        last: UpstreamResult | None = None
        failure: GatewayError | None = None
        tried: list[Replica] = []
        for attempt in range(self.settings.retries + 1):
            replica = await self._next_replica(tried, attempt)
            if replica is None:
                break
            replica.in_flight += 1
            handed_over = False
            try:
                url = self._urls.get((replica.index, path))
                if url is None:
                    url = self._urls[(replica.index, path)] = URL(replica.url + path)
                resp = await self.session.post(url, data=body, headers=self._request_headers, timeout=self.timeout)
                try:
                    if stream and resp.status < 300:
                        self.pool.record_success(replica)
                        handed_over = True  # the stream now owns the connection and the in-flight count
                        return UpstreamStream(self, replica, resp)
                    data = await resp.read()
                finally:
                    if not handed_over:
                        resp.release()
            except aiohttp.SocketTimeoutError as exc:
                self.on_error(self.name, "timeout")
                raise UpstreamTimeout(
                    f"Backend '{self.name}' did not answer within {self.settings.timeout_s:g}s."
                ) from exc
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                failure = self._connect_failed(replica, exc)
                continue
            finally:
                if not handed_over:
                    replica.in_flight -= 1
            result = UpstreamResult(resp.status, resp.content_type, data, replica.index, resp.raw_headers)
            if result.status in RETRY_STATUSES:
                self._status_failed(replica, result.status)
                last = result
                continue
            if result.status >= 500:  # not retried, and the replica stays in rotation, but still a failed attempt
                self.on_error(self.name, str(result.status))
            self.pool.record_success(replica)
            return result
        if last is not None:
            return last  # every attempt answered 502/503/504: relay the upstream's own answer
        raise failure or UpstreamUnavailable(f"Backend '{self.name}' is unreachable.")

    async def _next_replica(self, tried: list[Replica], attempt: int) -> Replica | None:
        replica = self.pool.pick(exclude=tried)
        if replica is None:  # every replica tried once already: go round again, after a backoff
            replica = self.pool.pick()
            if replica is None:
                return None
            delay = min(BACKOFF_BASE_S * 2 ** (attempt - 1), BACKOFF_MAX_S)
            await asyncio.sleep(delay * (0.5 + random.random()))
        tried.append(replica)
        return replica

    def _connect_failed(self, replica: Replica, exc: BaseException) -> GatewayError:
        reason = "connect_error"
        self.on_error(self.name, reason)
        self.pool.record_failure(replica, f"{type(exc).__name__}")
        # the replica's address and the client library's wording go to the log (with the request id), never
        # to the client
        logger.warning("backend %s replica %d (%s) unreachable: %s", self.name, replica.index, replica.url,
                       _describe(exc))
        return UpstreamUnavailable(f"Backend '{self.name}' is unreachable.")

    def _status_failed(self, replica: Replica, status: int) -> None:
        self.on_error(self.name, str(status))
        self.pool.record_failure(replica, f"HTTP {status}")

    async def probe(self, replica: Replica) -> bool:
        """Whether a replica answers ``GET /models`` with 200 (used to bring ejected replicas back)."""
        try:
            async with self.session.get(
                replica.url + "/models", headers=self.headers, timeout=self._probe_timeout
            ) as resp:
                await resp.read()
                return resp.status == 200
        except (TimeoutError, aiohttp.ClientError, OSError):
            return False

    async def readiness(self) -> tuple[int, int]:
        """Probe every replica now: ``(replicas answering, replicas)``."""
        oks = await asyncio.gather(*(self.probe(r) for r in self.pool.replicas))
        return sum(1 for ok in oks if ok), len(oks)

    async def close(self) -> None:
        await self.pool.close()
