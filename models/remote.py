"""``RemoteEngine``: the ``Engine`` interface over an OpenAI-compatible server (vLLM, a hosted API, a fake).

``complete`` POSTs ``{url}/completions`` with a prompt string, ``chat`` POSTs ``{url}/chat/completions``; their
streaming twins send ``"stream": true`` with ``stream_options.include_usage`` and turn the SSE ``data:`` events
into ``Delta`` objects. ``url`` is the server's base URL ending in ``/v1``.

Transport follows the gateway's upstream client: aiohttp, ``sock_connect``/``sock_read`` timeouts (``timeout_s``
is the longest wait for the server's next bytes: the whole answer when not streamed, the next event when
streamed), and ``retries`` extra attempts after a connect error or a 502/503/504 answer, with a short jittered
backoff. The engine uses a shared ``aiohttp.ClientSession`` when given one (the gateway's; never closed here)
or opens its own in ``start()`` (closed in ``close()``).

Failures are engine exceptions: a read timeout or a 504 is ``EngineTimeout``; 429 and 503 are
``EngineOverloaded``; unreachable servers, other error statuses and malformed answers are ``EngineError``
(statuses as ``models.wire.errors.error_for_status`` maps them), with the server's own error message when it
sent one. The API key only ever goes into the
``Authorization: Bearer`` header: it is redacted from every error message, and so are credentials in the URL.

Usage counts and finish reasons are read as :mod:`models.wire.read` describes (``n`` > 1: shared-out
completion tokens; a stream's last ``Delta`` carries the usage). Closing a stream early
(``aclose()``) drops its connection, which makes vLLM abort the generation. ``ping()`` checks reachability
(``GET /models``) for readiness probes.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import orjson

from models.engine import ChatTurn, Completion, Delta, EngineError, EngineTimeout, SamplingParams
from models.wire.errors import RETRY_STATUSES, error_for_status
from models.wire.read import StreamDecoder, completions_from_body, deltas_from_body, error_message, snippet
from models.wire.schemas import chat_messages

__all__ = ["RemoteEngine"]

BACKOFF_BASE_S = 0.05
#: Longest wait for the end of a stream's body after ``[DONE]`` (after that, the connection is dropped).
DRAIN_S = 0.05
PING_TIMEOUT_S = 5.0
KEEPALIVE_S = 60.0

JSONObj = dict[str, Any]


class RemoteEngine:
    """An OpenAI-compatible server as an ``Engine``; safe to call concurrently from one event loop."""

    def __init__(
        self,
        url: str,
        model: str,
        api_key: str | None = None,
        timeout_s: float = 60.0,
        connect_timeout_s: float = 5.0,
        retries: int = 1,
        session: aiohttp.ClientSession | None = None,
        *,
        name: str | None = None,
        extra_body: Mapping[str, Any] | None = None,
    ) -> None:
        """``extra_body``: fields added to every request body (vLLM extras such as ``repetition_penalty``);
        the fields this engine sets itself take precedence."""
        if not url.lower().startswith(("http://", "https://")):
            raise ValueError(f"engine url must start with http:// or https://: {_redact_url(url)!r}")
        if timeout_s <= 0 or connect_timeout_s <= 0 or retries < 0:
            raise ValueError("timeout_s and connect_timeout_s must be positive and retries not negative")
        self.url = url.rstrip("/")
        self.model = model
        self.name = name or model
        self.timeout_s = timeout_s
        self.retries = retries
        self.extra_body: dict[str, Any] = dict(extra_body or {})
        self._api_key = api_key or None
        self._where = _redact_url(self.url)
        self._headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
        if self._api_key:
            self._headers["Authorization"] = f"Bearer {self._api_key}"
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout_s, sock_read=timeout_s)
        self._session = session
        self._owns_session = False

    def __repr__(self) -> str:
        return f"RemoteEngine(name={self.name!r}, url={self._where!r}, model={self.model!r})"

    # ------------------------------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Open the engine's own session, unless it was given one."""
        if self._session is None or (self._owns_session and self._session.closed):
            # No connection cap (as the gateway's session): queueing belongs to the server, not to aiohttp.
            connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=KEEPALIVE_S)
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=self._timeout, skip_auto_headers=("User-Agent",),
                raise_for_status=False,
            )
            self._owns_session = True

    async def close(self) -> None:
        """Close the engine's own session (a shared one is left to its owner)."""
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None
            self._owns_session = False

    async def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or (self._owns_session and self._session.closed):
            await self.start()
        assert self._session is not None
        return self._session

    async def ping(self) -> bool:
        """Whether the server answers ``GET {url}/models`` with 200 within a few seconds (for readiness checks)."""
        session = await self._get_session()
        timeout = aiohttp.ClientTimeout(total=min(PING_TIMEOUT_S, self.timeout_s))
        try:
            async with session.get(self.url + "/models", headers=self._headers, timeout=timeout) as resp:
                await resp.read()
                return resp.status == 200
        except (TimeoutError, aiohttp.ClientError, OSError):
            return False

    # ------------------------------------------------------------------------------------- Engine

    async def complete(self, prompt: str, params: SamplingParams) -> list[Completion]:
        body = self._body(params, prompt=prompt)
        return completions_from_body(await self._fetch("/completions", body), chat=False, where=self._where)

    async def chat(self, messages: Sequence[ChatTurn], params: SamplingParams) -> list[Completion]:
        body = self._body(params, messages=chat_messages(messages))
        return completions_from_body(await self._fetch("/chat/completions", body), chat=True, where=self._where)

    async def stream_complete(self, prompt: str, params: SamplingParams) -> AsyncIterator[Delta]:
        body = self._body(params, prompt=prompt, stream=True)
        async for delta in self._stream("/completions", body, chat=False):
            yield delta

    async def stream_chat(self, messages: Sequence[ChatTurn], params: SamplingParams) -> AsyncIterator[Delta]:
        body = self._body(params, messages=chat_messages(messages), stream=True)
        async for delta in self._stream("/chat/completions", body, chat=True):
            yield delta

    # ------------------------------------------------------------------------------------- requests

    def _body(self, params: SamplingParams, *, stream: bool = False, **payload: Any) -> bytes:
        body: JSONObj = dict(self.extra_body)
        body["model"] = self.model
        body.update(payload)
        body["max_tokens"] = params.max_tokens
        body["temperature"] = params.temperature
        body["top_p"] = params.top_p
        body["n"] = params.n
        if params.stop:
            body["stop"] = list(params.stop)
        if params.seed is not None:
            body["seed"] = params.seed
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        return orjson.dumps(body)

    async def _fetch(self, path: str, body: bytes) -> JSONObj:
        resp = await self._post(path, body)
        try:
            data = await resp.read()
        except aiohttp.SocketTimeoutError as exc:
            raise self._timed_out() from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise EngineError(self._redact(f"{self._what()} broke off its answer: {_describe(exc)}")) from exc
        finally:
            resp.release()
        return self._parse_json(data)

    async def _post(self, path: str, body: bytes) -> aiohttp.ClientResponse:
        """POST ``body`` and return the open 2xx response, retrying connect errors and 502/503/504."""
        session = await self._get_session()
        failure: EngineError | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                await asyncio.sleep(BACKOFF_BASE_S * 2 ** (attempt - 1) * (0.5 + random.random()))
            try:
                resp = await session.post(self.url + path, data=body, headers=self._headers, timeout=self._timeout)
            except aiohttp.SocketTimeoutError as exc:
                raise self._timed_out() from exc
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                failure = EngineError(self._redact(f"{self._what()} is unreachable: {_describe(exc)}"))
                continue
            if resp.status < 300:
                return resp
            try:
                data = await resp.read()
            except aiohttp.SocketTimeoutError as exc:
                raise self._timed_out() from exc
            except (aiohttp.ClientError, OSError):
                data = b""
            finally:
                resp.release()
            failure = self._status_error(resp.status, data)
            if resp.status not in RETRY_STATUSES:
                break
        assert failure is not None
        raise failure

    async def _stream(self, path: str, body: bytes, *, chat: bool) -> AsyncIterator[Delta]:
        resp = await self._post(path, body)
        try:
            if resp.content_type == "application/json":  # a server that ignores "stream": answer in one go
                data = await resp.read()
                for delta in deltas_from_body(self._parse_json(data), chat=chat, where=self._where):
                    yield delta
                return
            reader = StreamDecoder(chat=chat, where=self._where)
            while not reader.done:
                chunk = await resp.content.readany()
                if not chunk:
                    break
                for delta in reader.feed(chunk):
                    yield delta
            for delta in reader.finish():
                yield delta
            if reader.done and not resp.content.at_eof():  # let the body end, so the connection is reused
                with contextlib.suppress(TimeoutError, aiohttp.ClientError, OSError):
                    async with asyncio.timeout(DRAIN_S):
                        await resp.content.read()
        except aiohttp.SocketTimeoutError as exc:
            raise self._timed_out() from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise EngineError(self._redact(f"{self._what()} broke off its stream: {_describe(exc)}")) from exc
        except EngineError as exc:  # the server's text may quote the key back: redact, keep the type
            raise type(exc)(self._redact(str(exc))) from exc.__cause__
        finally:
            if resp.content.at_eof():
                resp.release()
            else:  # abandoned or failed mid-stream: drop the connection, which aborts the generation
                resp.close()

    # ------------------------------------------------------------------------------------- errors

    def _what(self) -> str:
        return f"engine {self.name!r} ({self._where})"

    def _timed_out(self) -> EngineTimeout:
        return EngineTimeout(f"{self._what()} sent nothing for {self.timeout_s:g}s")

    def _redact(self, text: str) -> str:
        if self._api_key:
            text = text.replace(self._api_key, "***")
        return text

    def _parse_json(self, data: bytes) -> JSONObj:
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise EngineError(
                self._redact(f"{self._what()} answered with malformed JSON: {snippet(data)!r}")
            ) from None
        if not isinstance(obj, dict):
            raise EngineError(f"{self._what()} answered with JSON that is not an object")
        return obj

    def _status_error(self, status: int, data: bytes) -> EngineError:
        detail = error_message(data)
        text = f"{self._what()} answered HTTP {status}" + (f": {detail}" if detail else "")
        if status in (401, 403):
            text += " (check the API key configured for it)"
        return error_for_status(status, self._redact(text))


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) < 200 else text[:200] + "…"


def _redact_url(url: str) -> str:
    """``url`` without user:password credentials."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<invalid url>"
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))
