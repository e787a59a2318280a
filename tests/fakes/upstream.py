"""Fake OpenAI-compatible upstream (a stand-in for vLLM) for tests and benchmarks.

Run it as its own process from the repository root::

    python -m tests.fakes.upstream --host 127.0.0.1 --port 8001 [--name replica-a] \
        [--fail-status 503] [--delay-s 0.0] [--token-delay-s 0.0] [--require-key KEY] [--model NAME ...] \
        [--reply TEXT] [--echo REGEX] [--whole-token-delay-s 0.0] [--fail-if TEXT] [--linger-s 0.0]

Once it listens it prints ``READY <port>`` on stdout (``--port 0`` picks a free port and prints it).
SIGTERM and SIGINT stop it cleanly with exit status 0.

OpenAI routes: ``GET /v1/models``, ``POST /v1/chat/completions``, ``POST /v1/completions``
(non-streamed and SSE-streamed, ``n`` choices, logprobs, tool calls, ``response_format``, usage).
vLLM-like ``GET /health``.

``--reply TEXT`` makes every chat and completion reply exactly ``TEXT`` instead of the hello text
``Hello from <name>! You said: <prompt>`` (so that the fake can play a helper server: a plausible rewrite or
correction that passes the helpers' guards). The per-request ``n_words`` and ``response_format`` below still
take precedence, and ``unicode`` still appends its suffix.

``--echo REGEX`` makes the fake repeat part of what it was sent: the first group of REGEX searched (dot matches
newline) in the prompt (completions) or the last user message (chat) is the reply, or fills the ``{echo}`` in
``--reply`` (an aligner that returns the sentence it was given, say, so that a correction is as long as the
original). ``--whole-token-delay-s S`` makes a non-streamed answer take S seconds per completion token before it
is sent, as a server generating at 1/S tokens a second does (``--token-delay-s`` paces streams).
``--fail-if TEXT`` answers any ``/v1`` POST whose body contains TEXT with a 500 error (a helper failing on one
sentence).

Each request may carry an extra body field ``"fake": {...}`` that steers the fake:

* ``mode``: ``"normal"`` (default), ``"error"`` (answer ``status`` with an OpenAI error body),
  ``"error_text"`` (answer ``status`` with the plain-text body ``upstream exploded``), ``"cut"``
  (streamed: send the first ``cut_after`` events, then close the connection with no terminating
  chunk and no ``[DONE]``; non-streamed: close the connection without any response), ``"hang"``
  (sleep ``delay_s``, default 3600 s, before answering; streamed: send the first event, the role
  chunk, then sleep, then go on normally), ``"tools"`` (answer with a call to the first tool);
  any other value is treated as ``"normal"``.
* ``delay_s``: seconds to sleep before the response headers (in ``hang`` mode: the hang length).
* ``token_delay_s``: seconds to sleep between streamed events.
* ``status``: HTTP status for the error modes (default 500).
* ``cut_after``: number of events sent before a ``cut`` (default 2).
* ``n_words``: the reply is exactly ``w0 w1 ... w{n-1}`` (the hello text is dropped).
* ``unicode``: append `` héllo ✓ 🌍 日本語`` to the reply.
* ``linger_s``: streamed: keep the connection open this long after ``data: [DONE]`` before ending the response
  (as some servers do); default ``--linger-s``.
* ``headers``: extra response headers, ``{name: value}`` (e.g. an upstream ``x-request-id``).

Introspection, outside ``/v1`` and never subject to ``--require-key`` or ``--fail-status``:
``GET /_fake/requests`` (the last 200 ``/v1`` requests), ``POST /_fake/reset``,
``GET /_fake/stats`` and ``GET /_fake/health``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import re
import signal
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web
from multidict import CIMultiDict

from models.wire.read import content_text

try:
    import uvloop

    _LOOP_FACTORY: Callable[[], asyncio.AbstractEventLoop] | None = uvloop.new_event_loop
except ImportError:  # pragma: no cover - uvloop is optional
    _LOOP_FACTORY = None

JSONObj = dict[str, Any]
RawHeaders = tuple[tuple[bytes, bytes], ...]

UNICODE_SUFFIX = " héllo ✓ 🌍 日本語"
TOOL_ARGUMENTS = '{"city": "Paris"}'
# Streamed pieces of TOOL_ARGUMENTS; they concatenate to it exactly.
TOOL_ARGUMENT_PIECES = ('{"', "city", '": "', "Paris", '"}')
assert "".join(TOOL_ARGUMENT_PIECES) == TOOL_ARGUMENTS
TOOL_CALL_ID = "call_1"
DEFAULT_MODEL = "fake-model"
MAX_RECORDED = 200
DEFAULT_HANG_S = 3600.0
DEFAULT_CUT_AFTER = 2
# Deterministic fake log-probabilities, cycled over the reply's tokens.
_LOGPROBS = (-0.0123, -0.25, -0.5, -0.0457, -1.125, -0.3333, -0.0801)

_PIECE_RE = re.compile(r"\S+\s*")
_JSON_HEADERS = {"Content-Type": "application/json"}
_SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
_DONE = b"data: [DONE]\n\n"


class BadRequest(Exception):
    """A request the fake refuses with a 400 OpenAI-shaped error."""


def error_body(message: str, err_type: str, code: int | str | None) -> bytes:
    """Serialise an OpenAI-shaped error object."""
    return orjson.dumps({"error": {"message": message, "type": err_type, "param": None, "code": code}})


def json_response(obj: Any, status: int = 200) -> web.Response:
    """A JSON response serialised with orjson."""
    return web.Response(body=orjson.dumps(obj), status=status, headers=_JSON_HEADERS)


def split_pieces(text: str) -> list[str]:
    """Split ``text`` into tokens (whitespace-separated words, each with its trailing whitespace).

    ``"".join(split_pieces(text)) == text`` whenever ``text`` contains a non-space character.
    """
    pieces = _PIECE_RE.findall(text)
    if pieces and text[:1].isspace():
        pieces[0] = text[: len(text) - len(text.lstrip())] + pieces[0]
    return pieces


def truncate(pieces: list[str], max_tokens: int | None) -> tuple[list[str], str]:
    """Apply ``max_tokens``; return the kept pieces and the finish reason."""
    if max_tokens is None or max_tokens >= len(pieces):
        return pieces, "stop"
    kept = pieces[: max(max_tokens, 0)]
    if kept:
        kept[-1] = kept[-1].rstrip()
    return kept, "length"


def _opt_int(body: JSONObj, key: str) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(f"'{key}' must be an integer")
    return value


def _logprob(i: int) -> float:
    return _LOGPROBS[i % len(_LOGPROBS)]


def chat_logprob_entry(piece: str, i: int, top: int) -> JSONObj:
    """One entry of a chat ``logprobs.content`` list."""
    lp = _logprob(i)
    entry: JSONObj = {"token": piece, "logprob": lp, "bytes": list(piece.encode())}
    tops: list[JSONObj] = []
    if top > 0:
        tops.append({"token": piece, "logprob": lp, "bytes": list(piece.encode())})
        for j in range(1, top):
            alt = f"alt{j}"
            tops.append({"token": alt, "logprob": lp - j, "bytes": list(alt.encode())})
    entry["top_logprobs"] = tops
    return entry


def completion_logprobs(pieces: list[str], top: int, first_index: int = 0, offset: int = 0) -> JSONObj:
    """A legacy-completions ``logprobs`` object for ``pieces``."""
    token_logprobs: list[float] = []
    top_logprobs: list[dict[str, float]] = []
    text_offset: list[int] = []
    for k, piece in enumerate(pieces):
        lp = _logprob(first_index + k)
        token_logprobs.append(lp)
        tops = {piece: lp}
        for j in range(1, top):
            tops[f"alt{j}"] = lp - j
        top_logprobs.append(tops)
        text_offset.append(offset)
        offset += len(piece)
    return {
        "tokens": list(pieces),
        "token_logprobs": token_logprobs,
        "top_logprobs": top_logprobs,
        "text_offset": text_offset,
    }


@dataclass(slots=True)
class FakeOpts:
    """The parsed ``fake`` body field merged with the process-wide defaults."""

    mode: str
    status: int
    delay_s: float
    token_delay_s: float
    cut_after: int
    n_words: int | None
    unicode: bool
    linger_s: float = 0.0
    headers: dict[str, str] | None = None

    @classmethod
    def parse(
        cls, raw: Any, default_delay_s: float, default_token_delay_s: float, default_linger_s: float = 0.0
    ) -> FakeOpts:
        if not isinstance(raw, dict):
            raw = {}
        try:
            mode = str(raw.get("mode") or "normal")
            delay = raw.get("delay_s")
            if delay is not None:
                delay_s = float(delay)
            elif mode == "hang":
                delay_s = DEFAULT_HANG_S
            else:
                delay_s = default_delay_s
            token_delay = raw.get("token_delay_s")
            n_words = raw.get("n_words")
            linger = raw.get("linger_s")
            headers = raw.get("headers")
            return cls(
                mode=mode,
                status=int(raw.get("status") or 500),
                delay_s=delay_s,
                token_delay_s=default_token_delay_s if token_delay is None else float(token_delay),
                cut_after=int(raw.get("cut_after", DEFAULT_CUT_AFTER)),
                n_words=None if n_words is None else int(n_words),
                unicode=bool(raw.get("unicode", False)),
                linger_s=default_linger_s if linger is None else float(linger),
                headers={str(k): str(v) for k, v in headers.items()} if isinstance(headers, dict) else None,
            )
        except (TypeError, ValueError) as exc:
            raise BadRequest(f"invalid 'fake' field: {exc}") from exc


@dataclass(slots=True)
class ChoicePlan:
    """What one choice answers: text pieces or a tool call."""

    pieces: list[str]
    finish_reason: str
    tool_name: str | None = None

    @property
    def completion_tokens(self) -> int:
        if self.tool_name is not None:
            return len(TOOL_ARGUMENTS.split())
        return len(self.pieces)


@dataclass(slots=True)
class Config:
    """Process-wide settings from the command line."""

    name: str = "fake"
    fail_status: int | None = None
    delay_s: float = 0.0
    token_delay_s: float = 0.0
    require_key: str | None = None
    models: tuple[str, ...] = ()
    #: Every chat/completion reply is exactly this text (instead of the hello text), when set.
    reply: str | None = None
    #: Seconds a stream stays open after ``[DONE]`` (per request: ``fake.linger_s``).
    linger_s: float = 0.0
    #: The reply (or its ``{echo}``) is this pattern's first group in the text replied to, when set.
    echo: re.Pattern[str] | None = None
    #: Seconds a non-streamed answer takes per completion token.
    whole_token_delay_s: float = 0.0
    #: A /v1 POST whose body contains this text is answered with a 500 error.
    fail_if: str | None = None


class FakeUpstream:
    """The fake server's state and request handlers."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.recorded: deque[tuple[str, str, RawHeaders, bytes]] = deque(maxlen=MAX_RECORDED)
        self.models_seen: dict[str, None] = {}
        self.n_requests = 0
        self.streams_started = 0
        self.streams_completed = 0
        self.streams_aborted = 0
        self.streams_cut = 0
        #: Non-streamed answers whose client went away while the fake was generating them.
        self.replies_aborted = 0
        self._ids = itertools.count(1)
        self._id_prefix = os.urandom(4).hex()
        self._auth = None if config.require_key is None else f"Bearer {config.require_key}"
        self._auth_error = error_body(
            "Incorrect API key provided", "invalid_request_error", "invalid_api_key"
        )
        self._fail_body = (
            None
            if config.fail_status is None
            else error_body("fake upstream failure (--fail-status)", "server_error", config.fail_status)
        )

    # ----------------------------------------------------------------- app

    def build_app(self) -> web.Application:
        app = web.Application(client_max_size=256 * 1024 * 1024)
        app.router.add_get("/v1/models", self.handle_models)
        app.router.add_post("/v1/chat/completions", self.handle_chat)
        app.router.add_post("/v1/completions", self.handle_completions)
        app.router.add_get("/health", self.handle_health)
        app.router.add_get("/_fake/requests", self.handle_fake_requests)
        app.router.add_post("/_fake/reset", self.handle_fake_reset)
        app.router.add_get("/_fake/stats", self.handle_fake_stats)
        app.router.add_get("/_fake/health", self.handle_fake_health)
        return app

    # ----------------------------------------------------------------- common

    def _new_id(self, prefix: str) -> str:
        return f"{prefix}-{self._id_prefix}{next(self._ids):010x}"

    async def _admit(self, request: web.Request) -> tuple[bytes, web.Response | None]:
        """Read and record a /v1 request; return its body and an early response, if any."""
        raw = await request.read()
        self.n_requests += 1
        self.recorded.append((request.method, request.path, request.raw_headers, raw))
        if self._auth is not None and request.headers.get("Authorization") != self._auth:
            return raw, web.Response(body=self._auth_error, status=401, headers=_JSON_HEADERS)
        if self._fail_body is not None and self.config.fail_status is not None:
            return raw, web.Response(
                body=self._fail_body, status=self.config.fail_status, headers=_JSON_HEADERS
            )
        fail_if = self.config.fail_if
        if fail_if is not None and request.method == "POST" and fail_if.encode() in raw:
            body = error_body("fake upstream failure (--fail-if)", "server_error", 500)
            return raw, web.Response(body=body, status=500, headers=_JSON_HEADERS)
        return raw, None

    def _parse(self, raw: bytes) -> JSONObj:
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise BadRequest(f"Malformed JSON body: {exc}") from exc
        if not isinstance(body, dict):
            raise BadRequest("The request body must be a JSON object")
        model = body.get("model")
        if isinstance(model, str) and model not in self.models_seen:
            self.models_seen[model] = None
        return body

    def _reply_text(self, body: JSONObj, opts: FakeOpts, said: str) -> str:
        response_format = body.get("response_format")
        if isinstance(response_format, dict) and response_format.get("type") in (
            "json_object",
            "json_schema",
        ):
            answer = f"Hello from {self.config.name}"
            if opts.unicode:
                answer += UNICODE_SUFFIX
            return json.dumps({"answer": answer}, ensure_ascii=False)
        if opts.n_words is not None:
            return " ".join([f"w{i}" for i in range(opts.n_words)])
        echo = self.config.echo
        if echo is not None:
            match = echo.search(said)
            echoed = match.group(1) if match is not None and match.groups() else ""
            text = echoed if self.config.reply is None else self.config.reply.replace("{echo}", echoed)
        elif self.config.reply is not None:
            text = self.config.reply
        else:
            text = f"Hello from {self.config.name}! You said: {said}"
        if opts.unicode:
            text += UNICODE_SUFFIX
        return text

    async def _early(self, request: web.Request, body: JSONObj, opts: FakeOpts) -> web.StreamResponse | None:
        """Handle the error and non-streamed cut modes; None when the request proceeds."""
        mode = opts.mode
        if mode == "error":
            if opts.delay_s > 0:
                await asyncio.sleep(opts.delay_s)
            return web.Response(
                body=error_body("fake upstream error", "server_error", opts.status),
                status=opts.status,
                headers=_JSON_HEADERS,
            )
        if mode == "error_text":
            if opts.delay_s > 0:
                await asyncio.sleep(opts.delay_s)
            return web.Response(text="upstream exploded", status=opts.status, content_type="text/plain")
        if mode == "cut" and not body.get("stream"):
            if opts.delay_s > 0:
                await asyncio.sleep(opts.delay_s)
            if request.transport is not None:
                request.transport.close()
            return web.Response(status=500)  # never reaches the client
        return None

    async def _reply(self, obj: JSONObj, opts: FakeOpts) -> web.Response:
        if opts.delay_s > 0:
            await asyncio.sleep(opts.delay_s)
        pace = self.config.whole_token_delay_s
        if pace > 0:
            try:
                await asyncio.sleep(pace * obj["usage"]["completion_tokens"])
            except asyncio.CancelledError:  # the client went away (handler cancellation)
                self.replies_aborted += 1
                raise
        resp = json_response(obj)
        if opts.headers:
            resp.headers.update(opts.headers)
        return resp

    async def _stream(
        self, request: web.Request, events: Iterable[bytes], opts: FakeOpts
    ) -> web.StreamResponse:
        """Write SSE ``events`` then ``[DONE]``, honouring the delay, hang and cut modes."""
        self.streams_started += 1
        finished = cut = False
        headers = CIMultiDict(_SSE_HEADERS)
        headers.update(opts.headers or {})
        resp = web.StreamResponse(headers=headers)
        hang = opts.mode == "hang"
        cut_after = opts.cut_after if opts.mode == "cut" else -1
        token_delay = opts.token_delay_s
        try:
            if opts.delay_s > 0 and not hang:
                await asyncio.sleep(opts.delay_s)
            await resp.prepare(request)
            for i, event in enumerate(events):
                if i == cut_after:
                    break
                if i and token_delay > 0:
                    await asyncio.sleep(token_delay)
                await resp.write(event)
                if i == 0 and hang:
                    await asyncio.sleep(opts.delay_s)
            if cut_after >= 0:
                cut = True
                if request.transport is not None:
                    request.transport.close()  # flushes what was written, then FIN: no last chunk
                return resp
            if token_delay > 0:
                await asyncio.sleep(token_delay)
            await resp.write(_DONE)
            if opts.linger_s > 0:
                await asyncio.sleep(opts.linger_s)
            await resp.write_eof()
            finished = True
            return resp
        except ConnectionResetError:  # the client went away while we were writing
            return resp
        finally:
            if finished:
                self.streams_completed += 1
            elif cut:
                self.streams_cut += 1
            else:  # ConnectionResetError or CancelledError (handler cancelled on disconnect)
                self.streams_aborted += 1

    # ----------------------------------------------------------------- /v1

    async def handle_models(self, request: web.Request) -> web.Response:
        _, early = await self._admit(request)
        if early is not None:
            return early
        names = dict.fromkeys(self.config.models)
        names.update(self.models_seen)
        if not names:
            names[DEFAULT_MODEL] = None
        data = [{"id": name, "object": "model", "created": 0, "owned_by": "fake"} for name in names]
        return json_response({"object": "list", "data": data})

    async def handle_chat(self, request: web.Request) -> web.StreamResponse:
        raw, early = await self._admit(request)
        if early is not None:
            return early
        try:
            body = self._parse(raw)
            opts = FakeOpts.parse(
                body.get("fake"), self.config.delay_s, self.config.token_delay_s, self.config.linger_s
            )
            n = _opt_int(body, "n") or 1
            max_tokens = _opt_int(body, "max_completion_tokens")
            if max_tokens is None:
                max_tokens = _opt_int(body, "max_tokens")
            top_logprobs = _opt_int(body, "top_logprobs") or 0
            messages = body.get("messages")
            if not isinstance(messages, list):
                raise BadRequest("'messages' must be a list")
        except BadRequest as exc:
            return web.Response(
                body=error_body(str(exc), "invalid_request_error", 400), status=400, headers=_JSON_HEADERS
            )
        early_resp = await self._early(request, body, opts)
        if early_resp is not None:
            return early_resp

        prompt_tokens = 0
        said = ""
        for msg in messages:
            if isinstance(msg, dict):
                text = content_text(msg.get("content"))
                prompt_tokens += len(text.split())
                if msg.get("role") == "user":
                    said = text

        tool_name = self._tool_name(body, opts)
        if tool_name is not None:
            plans = [ChoicePlan([], "tool_calls", tool_name) for _ in range(n)]
        else:
            reply = split_pieces(self._reply_text(body, opts, said))
            plans = []
            for _ in range(n):
                pieces, finish = truncate(list(reply), max_tokens)
                plans.append(ChoicePlan(pieces, finish))
        completion_tokens = sum(p.completion_tokens for p in plans)
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
        want_logprobs = body.get("logprobs") is True
        model = body.get("model") if isinstance(body.get("model"), str) else DEFAULT_MODEL
        cid = self._new_id("chatcmpl")
        created = int(time.time())

        if not body.get("stream"):
            choices = []
            for index, plan in enumerate(plans):
                message: JSONObj
                if plan.tool_name is not None:
                    message = {
                        "role": "assistant",
                        "content": None,
                        "tool_calls": [
                            {
                                "id": TOOL_CALL_ID,
                                "type": "function",
                                "function": {"name": plan.tool_name, "arguments": TOOL_ARGUMENTS},
                            }
                        ],
                    }
                    logprobs = None
                else:
                    message = {"role": "assistant", "content": "".join(plan.pieces)}
                    logprobs = (
                        {
                            "content": [
                                chat_logprob_entry(p, i, top_logprobs) for i, p in enumerate(plan.pieces)
                            ]
                        }
                        if want_logprobs
                        else None
                    )
                choices.append(
                    {
                        "index": index,
                        "message": message,
                        "logprobs": logprobs,
                        "finish_reason": plan.finish_reason,
                    }
                )
            obj = {
                "id": cid,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": choices,
                "usage": usage,
            }
            return await self._reply(obj, opts)

        include_usage = _include_usage(body)
        head = orjson.dumps(
            {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model}
        )
        head = b"data: " + head[:-1] + b',"choices":['
        tail = b'],"usage":null}\n\n' if include_usage else b"]}\n\n"

        def chunk(choice: JSONObj) -> bytes:
            return head + orjson.dumps(choice) + tail

        per_choice: list[list[bytes]] = []
        for index, plan in enumerate(plans):
            events = [
                chunk(
                    {
                        "index": index,
                        "delta": {"role": "assistant", "content": ""},
                        "logprobs": None,
                        "finish_reason": None,
                    }
                )
            ]
            if plan.tool_name is not None:
                first_call = {
                    "index": 0,
                    "id": TOOL_CALL_ID,
                    "type": "function",
                    "function": {"name": plan.tool_name, "arguments": ""},
                }
                events.append(
                    chunk(
                        {
                            "index": index,
                            "delta": {"tool_calls": [first_call]},
                            "logprobs": None,
                            "finish_reason": None,
                        }
                    )
                )
                for piece in TOOL_ARGUMENT_PIECES:
                    delta = {"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}
                    events.append(
                        chunk({"index": index, "delta": delta, "logprobs": None, "finish_reason": None})
                    )
            else:
                for i, piece in enumerate(plan.pieces):
                    lp = {"content": [chat_logprob_entry(piece, i, top_logprobs)]} if want_logprobs else None
                    events.append(
                        chunk(
                            {
                                "index": index,
                                "delta": {"content": piece},
                                "logprobs": lp,
                                "finish_reason": None,
                            }
                        )
                    )
            events.append(
                chunk({"index": index, "delta": {}, "logprobs": None, "finish_reason": plan.finish_reason})
            )
            per_choice.append(events)
        stream = _interleave(per_choice)
        if include_usage:
            stream.append(_usage_chunk(cid, "chat.completion.chunk", created, model, usage))
        return await self._stream(request, stream, opts)

    def _tool_name(self, body: JSONObj, opts: FakeOpts) -> str | None:
        tools = body.get("tools")
        if not isinstance(tools, list) or not tools:
            return None
        tool_choice = body.get("tool_choice")
        named: str | None = None
        if isinstance(tool_choice, dict):
            function = tool_choice.get("function")
            if isinstance(function, dict) and isinstance(function.get("name"), str):
                named = function["name"]
        if opts.mode != "tools" and tool_choice != "required" and named is None:
            return None
        if named is not None:
            return named
        first = tools[0]
        if isinstance(first, dict):
            function = first.get("function")
            if isinstance(function, dict) and isinstance(function.get("name"), str):
                name: str = function["name"]
                return name
        return "unknown_tool"

    async def handle_completions(self, request: web.Request) -> web.StreamResponse:
        raw, early = await self._admit(request)
        if early is not None:
            return early
        try:
            body = self._parse(raw)
            opts = FakeOpts.parse(
                body.get("fake"), self.config.delay_s, self.config.token_delay_s, self.config.linger_s
            )
            n = _opt_int(body, "n") or 1
            max_tokens = _opt_int(body, "max_tokens")
            logprobs_k = _opt_int(body, "logprobs")
            prompts = _prompts(body.get("prompt"))
        except BadRequest as exc:
            return web.Response(
                body=error_body(str(exc), "invalid_request_error", 400), status=400, headers=_JSON_HEADERS
            )
        early_resp = await self._early(request, body, opts)
        if early_resp is not None:
            return early_resp

        prompt_tokens = 0
        plans: list[ChoicePlan] = []
        for prompt in prompts:
            prompt_tokens += len(prompt.split())
            reply = split_pieces(self._reply_text(body, opts, prompt))
            for _ in range(n):
                pieces, finish = truncate(list(reply), max_tokens)
                plans.append(ChoicePlan(pieces, finish))
        completion_tokens = sum(p.completion_tokens for p in plans)
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
        model = body.get("model") if isinstance(body.get("model"), str) else DEFAULT_MODEL
        cid = self._new_id("cmpl")
        created = int(time.time())

        if not body.get("stream"):
            choices = [
                {
                    "index": index,
                    "text": "".join(plan.pieces),
                    "logprobs": None if logprobs_k is None else completion_logprobs(plan.pieces, logprobs_k),
                    "finish_reason": plan.finish_reason,
                }
                for index, plan in enumerate(plans)
            ]
            obj = {
                "id": cid,
                "object": "text_completion",
                "created": created,
                "model": model,
                "choices": choices,
                "usage": usage,
            }
            return await self._reply(obj, opts)

        include_usage = _include_usage(body)
        head = orjson.dumps({"id": cid, "object": "text_completion", "created": created, "model": model})
        head = b"data: " + head[:-1] + b',"choices":['
        tail = b'],"usage":null}\n\n' if include_usage else b"]}\n\n"
        per_choice: list[list[bytes]] = []
        for index, plan in enumerate(plans):
            events: list[bytes] = []
            offset = 0
            for i, piece in enumerate(plan.pieces):
                lp = None if logprobs_k is None else completion_logprobs([piece], logprobs_k, i, offset)
                offset += len(piece)
                choice = {"index": index, "text": piece, "logprobs": lp, "finish_reason": None}
                events.append(head + orjson.dumps(choice) + tail)
            choice = {"index": index, "text": "", "logprobs": None, "finish_reason": plan.finish_reason}
            events.append(head + orjson.dumps(choice) + tail)
            per_choice.append(events)
        stream = _interleave(per_choice)
        if include_usage:
            stream.append(_usage_chunk(cid, "text_completion", created, model, usage))
        return await self._stream(request, stream, opts)

    async def handle_health(self, request: web.Request) -> web.Response:
        status = self.config.fail_status
        return web.Response(status=200 if status is None else status)

    # ----------------------------------------------------------------- /_fake

    async def handle_fake_requests(self, request: web.Request) -> web.Response:
        out: list[JSONObj] = []
        for method, path, raw_headers, raw in self.recorded:
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in raw_headers}
            parsed: Any = None
            if raw:
                try:
                    parsed = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    parsed = None
            out.append(
                {
                    "method": method,
                    "path": path,
                    "headers": headers,
                    "body": parsed,
                    "raw": raw.decode("utf-8", "replace"),
                }
            )
        return json_response(out)

    async def handle_fake_reset(self, request: web.Request) -> web.Response:
        self.recorded.clear()
        self.models_seen.clear()
        self.n_requests = 0
        self.streams_started = self.streams_completed = self.streams_aborted = self.streams_cut = 0
        self.replies_aborted = 0
        return json_response({"ok": True})

    async def handle_fake_stats(self, request: web.Request) -> web.Response:
        return json_response(
            {
                "requests": self.n_requests,
                "streams_started": self.streams_started,
                "streams_completed": self.streams_completed,
                "streams_aborted": self.streams_aborted,
                "streams_cut": self.streams_cut,
                "replies_aborted": self.replies_aborted,
            }
        )

    async def handle_fake_health(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")


def _include_usage(body: JSONObj) -> bool:
    stream_options = body.get("stream_options")
    return isinstance(stream_options, dict) and stream_options.get("include_usage") is True


def _usage_chunk(cid: str, obj: str, created: int, model: Any, usage: JSONObj) -> bytes:
    chunk = {"id": cid, "object": obj, "created": created, "model": model, "choices": [], "usage": usage}
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


def _interleave(per_choice: list[list[bytes]]) -> list[bytes]:
    if len(per_choice) == 1:
        return per_choice[0]
    return [e for group in itertools.zip_longest(*per_choice) for e in group if e is not None]


def _prompts(prompt: Any) -> list[str]:
    """The legacy-completions ``prompt`` as a list of prompt texts (token ids are joined as text)."""
    if prompt is None:
        return [""]
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, list):
        if not prompt:
            raise BadRequest("'prompt' must not be empty")
        if all(isinstance(p, int) and not isinstance(p, bool) for p in prompt):
            return [" ".join(str(p) for p in prompt)]
        out: list[str] = []
        for p in prompt:
            if isinstance(p, str):
                out.append(p)
            elif isinstance(p, list) and all(isinstance(t, int) for t in p):
                out.append(" ".join(str(t) for t in p))
            else:
                raise BadRequest("'prompt' must be a string, a list of strings or token ids")
        return out
    raise BadRequest("'prompt' must be a string, a list of strings or token ids")


async def serve(config: Config, host: str, port: int) -> None:
    """Serve until SIGTERM or SIGINT; print ``READY <port>`` once listening."""
    fake = FakeUpstream(config)
    runner = web.AppRunner(
        fake.build_app(),
        access_log=None,
        handler_cancellation=True,  # a client disconnect cancels its handler (abort stats, hangs)
        shutdown_timeout=0.5,
    )
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=2048, reuse_address=True)
    await site.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    bound_port = runner.addresses[0][1]
    sys.stdout.write(f"READY {bound_port}\n")
    sys.stdout.flush()
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def parse_args(argv: list[str] | None = None) -> tuple[Config, str, int]:
    parser = argparse.ArgumentParser(
        prog="python -m tests.fakes.upstream", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001, help="0 picks a free port (printed on READY)")
    parser.add_argument("--name", default="fake", help="replica name, included in every reply")
    parser.add_argument(
        "--fail-status",
        type=int,
        default=None,
        help="answer every /v1 request (and /health) with this status",
    )
    parser.add_argument("--delay-s", type=float, default=0.0, help="default delay before response headers")
    parser.add_argument("--token-delay-s", type=float, default=0.0, help="default delay between SSE events")
    parser.add_argument("--require-key", default=None, help="require 'Authorization: Bearer KEY' on /v1")
    parser.add_argument(
        "--model",
        action="append",
        default=[],
        help="model id listed by /v1/models (repeatable); seen models are listed too",
    )
    parser.add_argument(
        "--reply", default=None, help="every chat/completion reply is exactly TEXT (instead of the hello text)"
    )
    parser.add_argument(
        "--echo", default=None, help="the reply (or --reply's {echo}) is REGEX's first group in the text sent"
    )
    parser.add_argument(
        "--whole-token-delay-s", type=float, default=0.0, help="seconds a non-streamed answer takes per token"
    )
    parser.add_argument("--fail-if", default=None, help="answer a /v1 POST whose body contains TEXT with a 500")
    parser.add_argument(
        "--linger-s", type=float, default=0.0, help="default seconds a stream stays open after [DONE]"
    )
    args = parser.parse_args(argv)
    config = Config(
        name=args.name,
        fail_status=args.fail_status,
        delay_s=args.delay_s,
        token_delay_s=args.token_delay_s,
        require_key=args.require_key,
        models=tuple(args.model),
        reply=args.reply,
        linger_s=args.linger_s,
        echo=re.compile(args.echo, re.DOTALL) if args.echo is not None else None,
        whole_token_delay_s=args.whole_token_delay_s,
        fail_if=args.fail_if,
    )
    return config, args.host, args.port


def main(argv: list[str] | None = None) -> None:
    config, host, port = parse_args(argv)
    with asyncio.Runner(loop_factory=_LOOP_FACTORY) as runner:
        runner.run(serve(config, host, port))


if __name__ == "__main__":
    main()
