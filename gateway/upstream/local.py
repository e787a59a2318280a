"""A local backend: the OpenAI routes served by an in-process ``Engine`` instead of HTTP replicas.

``LocalBackend`` implements the ``Backend`` protocol, so a backend configured with ``local:`` serves
``/chat/completions`` and ``/completions`` exactly as a remote one does: the request body bytes go in, OpenAI
response bytes (whole JSON, or an SSE stream shaped like vLLM's) come out, and the inference service cannot
tell the difference.

Request mapping (bodies are validated again with the request schemas, ``models.wire.schemas``, defensively):

- ``max_tokens`` (chat: ``max_completion_tokens`` wins) defaults to ``default_max_tokens``; ``temperature``
  to 1.0 and ``top_p`` to 1.0 (OpenAI's defaults); ``top_p: 0`` means greedy. ``stop`` (a string or a list),
  ``seed`` and ``n`` are passed through. Chat messages become ``ChatTurn``\\ s (a content list's text parts
  joined by ``"\\n"``; the ``developer`` role is sent as ``system``).
- A completions request with several prompts makes one engine call per prompt, run concurrently (the local
  engine batches them); choice ``j`` of prompt ``i`` gets index ``i * n + j``, as OpenAI numbers them.
- Requests the engine cannot honour are refused with a 400 naming the parameter (code
  ``unsupported_parameter``): ``tools``/``tool_choice``/``functions``/``function_call`` (unless ``"none"``),
  tool or function messages, non-text content parts, ``logprobs``/``top_logprobs``, ``response_format`` other
  than text, ``logit_bias``, ``echo``, ``best_of`` > 1, ``suffix``, ``prompt_embeds`` and token-id prompts.
- Ignored (the engine has no such knob, and ignoring them is harmless): ``presence_penalty``,
  ``frequency_penalty``, ``user``, message ``name``, ``parallel_tool_calls``, ``metadata``/``store``, every
  unknown field (vLLM extras such as ``top_k`` or ``repetition_penalty``), and ``stream`` in ``fetch``
  (a whole JSON answer is always returned there).

Errors: a prompt longer than the model's context (``PromptTooLong``, found when the engine tokenizes it) is answered
400 ``invalid_request_error``/``context_length_exceeded`` with ``param`` ``messages`` (chat) or ``prompt``
(completions), as OpenAI and vLLM answer it. Other engine failures become OpenAI-shaped error results, after the
table in ``models.wire.errors``:
``EngineOverloaded`` 503 (``overloaded_error``/``engine_overloaded``), ``EngineTimeout`` or ``timeout_s`` passing
504 (``upstream_error``/``upstream_timeout``), any other ``EngineError`` 502 (``upstream_error``/``engine_error``);
an unexpected exception is logged with its traceback and answered 502 without it. In a stream, a failure
before the first delta is answered the same way (``open_stream`` waits for the first delta); a failure after
it raises ``UpstreamTimeout``/``UpstreamBroken`` from ``chunks()``.

Streams: each engine call runs in a task that feeds one queue (so several prompts merge into one stream);
``LocalStream.close()`` cancels those tasks, which closes the engine's generators, which drops their rows.
``timeout_s`` bounds a whole non-streamed call, and each wait for the next delta of a stream (the way a
remote backend's read timeout does).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

import orjson

from gateway.errors import BadRequest, GatewayError, NotFound, UpstreamBroken, engine_error, parse_request
from gateway.upstream.protocol import RawHeaders, UpstreamResult
from models.engine import (
    ChatTurn,
    Completion,
    Delta,
    Engine,
    EngineError,
    EngineOverloaded,
    EngineTimeout,
    PromptTooLong,
    SamplingParams,
)
from models.wire.chunks import ChunkWriter, usage_object
from models.wire.errors import TIMED_OUT, engine_failure
from models.wire.schemas import ChatCompletionRequest, ChatMessage, CompletionRequest
from models.wire.sse import DONE

__all__ = ["LocalBackend", "LocalStream"]

logger = logging.getLogger(__name__)

#: Called once per failed engine call with (backend name, reason), like ``RemoteBackend``'s hook:
#: "503"/"504"/"502" before a response started, "timeout"/"stream_broken" after.
ErrorHook = Callable[[str, str], None]

Route = Literal["chat", "completions"]
_ROUTES: dict[str, Route] = {"/chat/completions": "chat", "/completions": "completions"}
_CHAT_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
#: Longest engine message quoted in the log.
MAX_DETAIL = 300
#: The range of ``seed`` values a 64-bit generator accepts.
_SEED_MIN, _SEED_MAX = -(2**63), 2**64 - 1

#: What a streaming task puts on its queue: (engine call, a Delta | the failure | None once it ended).
_Item: TypeAlias = tuple[int, Delta | Exception | None]


def _ignore_error(backend: str, reason: str) -> None:
    return None


def _unsupported(param: str, what: str) -> BadRequest:
    return BadRequest(f"{what} is not supported by the local engine.", param=param, code="unsupported_parameter")


def _invalid(param: str, why: str) -> BadRequest:
    return BadRequest(f"Invalid value for '{param}': {why}.", param=param, code="invalid_value")


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= MAX_DETAIL else text[:MAX_DETAIL] + "…"


def _error_result(exc: GatewayError) -> UpstreamResult:
    return UpstreamResult(exc.status, "application/json", orjson.dumps(exc.body()), 0)


@dataclass(frozen=True, slots=True)
class _Plan:
    """A validated request: what to ask the engine, and what the answer must look like."""

    route: Route
    model: str
    params: SamplingParams
    #: Completions: one engine call per prompt.
    prompts: tuple[str, ...] = ()
    #: Chat: the one engine call's messages.
    messages: tuple[ChatTurn, ...] = ()
    include_usage: bool = False

    @property
    def calls(self) -> int:
        return len(self.prompts) if self.route == "completions" else 1


def _sampling(
    req: ChatCompletionRequest | CompletionRequest, max_tokens: int | None, max_param: str, default_max: int
) -> SamplingParams:
    if max_tokens is None:
        max_tokens = default_max
    elif max_tokens < 1:
        raise _invalid(max_param, "must be at least 1")
    temperature = 1.0 if req.temperature is None else float(req.temperature)
    if temperature < 0:
        raise _invalid("temperature", "must be at least 0")
    top_p = 1.0 if req.top_p is None else float(req.top_p)
    if not 0 <= top_p <= 1:
        raise _invalid("top_p", "must be between 0 and 1")
    if top_p == 0:  # only the most likely token is kept: greedy decoding
        temperature, top_p = 0.0, 1.0
    if req.seed is not None and not _SEED_MIN <= req.seed <= _SEED_MAX:
        raise _invalid("seed", "must fit in 64 bits")
    if isinstance(req.stop, str):
        stop: tuple[str, ...] = (req.stop,) if req.stop else ()
    else:
        stop = tuple(s for s in req.stop or () if s)
    return SamplingParams(
        max_tokens=max_tokens, temperature=temperature, top_p=top_p, stop=stop, seed=req.seed, n=req.n or 1
    )


def _check_common(req: ChatCompletionRequest | CompletionRequest) -> None:
    if req.logit_bias:
        raise _unsupported("logit_bias", "'logit_bias'")


def _chat_turns(messages: Sequence[ChatMessage]) -> tuple[ChatTurn, ...]:
    turns: list[ChatTurn] = []
    for i, message in enumerate(messages):
        role = message.role
        if role in ("tool", "function"):
            raise _unsupported(f"messages.{i}.role", f"A message with role '{role}' (a tool result)")
        mapped = _CHAT_ROLES.get(role)
        if mapped is None:
            raise _invalid(f"messages.{i}.role", f"'{role}' is not one of 'system', 'developer', 'user', 'assistant'")
        if message.tool_calls:
            raise _unsupported(f"messages.{i}.tool_calls", "A message with 'tool_calls'")
        if (message.model_extra or {}).get("function_call") is not None:
            raise _unsupported(f"messages.{i}.function_call", "A message with 'function_call'")
        content = message.content
        if content is None:
            text = ""
        elif isinstance(content, str):
            text = content
        else:
            texts: list[str] = []
            for j, part in enumerate(content):
                if part.type != "text":
                    raise _unsupported(f"messages.{i}.content.{j}.type", f"Content of type '{part.type}'")
                value = (part.model_extra or {}).get("text")
                if not isinstance(value, str):
                    raise _invalid(f"messages.{i}.content.{j}.text", "a text part needs a 'text' string")
                texts.append(value)
            text = "\n".join(texts)
        turns.append(ChatTurn(mapped, text))
    return tuple(turns)


def _check_chat(req: ChatCompletionRequest) -> None:
    extra = req.model_extra or {}
    if req.tools and req.tool_choice != "none":
        raise _unsupported("tools", "Tool calling ('tools')")
    if req.tool_choice is not None and req.tool_choice != "none" and not (req.tool_choice == "auto" and not req.tools):
        raise _unsupported("tool_choice", "Tool calling ('tool_choice')")
    function_call = extra.get("function_call")
    if extra.get("functions") and function_call != "none":
        raise _unsupported("functions", "Function calling ('functions')")
    if function_call is not None and function_call not in ("none", "auto"):
        raise _unsupported("function_call", "Function calling ('function_call')")
    if req.logprobs:
        raise _unsupported("logprobs", "'logprobs'")
    if req.top_logprobs:
        raise _unsupported("top_logprobs", "'top_logprobs'")
    if req.response_format is not None:
        kind = req.response_format.get("type", "text")
        if kind != "text":
            raise _unsupported("response_format", f"'response_format' of type {kind!r} (only 'text')")
    _check_common(req)


def _completion_prompts(req: CompletionRequest) -> tuple[str, ...]:
    extra = req.model_extra or {}
    if req.echo:
        raise _unsupported("echo", "'echo'")
    if req.best_of is not None and req.best_of > 1:
        raise _unsupported("best_of", "'best_of' greater than 1")
    if req.suffix:
        raise _unsupported("suffix", "'suffix'")
    if req.logprobs is not None:
        raise _unsupported("logprobs", "'logprobs'")
    if extra.get("prompt_embeds") is not None:
        raise _unsupported("prompt_embeds", "'prompt_embeds'")
    _check_common(req)
    prompt = req.prompt
    if prompt is None:
        raise BadRequest("Missing required parameter: 'prompt'.", param="prompt", code="missing_required_parameter")
    prompts: list[str] = []
    for item in [prompt] if isinstance(prompt, str) else prompt:
        if not isinstance(item, str):
            raise _unsupported("prompt", "A prompt of token ids (send text)")
        prompts.append(item)
    if not prompts:
        raise _invalid("prompt", "must not be an empty list")
    if not all(prompts):
        raise _invalid("prompt", "a prompt must not be empty")
    return tuple(prompts)


class LocalBackend:
    """The OpenAI routes served by an in-process ``Engine`` (one "replica", index 0).

    Args:
        name: the model name clients use (``upstream_model`` is always None: the engine serves one model).
        engine: the engine; call ``start()`` (or start the engine yourself) before serving.
        default_max_tokens: ``max_tokens`` of a request that gives none.
        timeout_s: deadline of a whole non-streamed call, and of each wait for a stream's next delta.
        owns_engine: whether ``close()`` closes the engine (False when helpers share it).
        on_error: called with (backend name, reason) for each failed engine call (metrics).
    """

    def __init__(
        self,
        name: str,
        engine: Engine,
        *,
        default_max_tokens: int = 256,
        timeout_s: float = 600,
        owns_engine: bool = True,
        on_error: ErrorHook = _ignore_error,
    ) -> None:
        if default_max_tokens < 1 or timeout_s <= 0:
            raise ValueError("default_max_tokens must be >= 1 and timeout_s > 0")
        self.name = name
        self.upstream_model: str | None = None
        self.engine = engine
        self.default_max_tokens = default_max_tokens
        self.timeout_s = timeout_s
        self.owns_engine = owns_engine
        self.on_error = on_error
        self._started = False
        #: Streaming tasks still running (``close`` cancels them).
        self._tasks: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Start the engine (loads the model; engines' ``start`` is idempotent, so a shared one is fine)."""
        await self.engine.start()
        self._started = True

    async def readiness(self) -> tuple[int, int]:
        """``(1, 1)`` once the engine is started, else ``(0, 1)``.

        Asked in order: the engine's boolean ``ready`` attribute, when it has one; this backend's own
        ``start()``; else an engine that was started elsewhere (a shared one) is recognised by a set
        ``loaded`` attribute (``LocalEngine`` sets it in ``start()``).
        """
        ready = getattr(self.engine, "ready", None)
        if isinstance(ready, bool):
            up = ready
        elif self._started:
            up = True
        else:
            up = getattr(self.engine, "loaded", None) is not None
        return (1 if up else 0), 1

    async def close(self) -> None:
        """Stop the streams still running and, when this backend owns it, close the engine."""
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._started = False
        if self.owns_engine:
            await self.engine.close()

    # ------------------------------------------------------------------ Backend interface
    async def fetch(self, path: str, body: bytes) -> UpstreamResult:
        """Answer a whole (non-streamed) request: OpenAI response JSON, or an OpenAI error."""
        try:
            plan = self._plan(path, body)
            results = await self._run(plan)
        except GatewayError as exc:
            return _error_result(exc)
        return UpstreamResult(200, "application/json", _response_body(plan, results), 0)

    async def open_stream(self, path: str, body: bytes) -> LocalStream | UpstreamResult:
        """Start the engine and wait for its first delta: a ``LocalStream``, or an error result if it fails first."""
        try:
            plan = self._plan(path, body)
        except GatewayError as exc:
            return _error_result(exc)
        queue: asyncio.Queue[_Item] = asyncio.Queue()
        loop = asyncio.get_running_loop()
        tasks = [loop.create_task(self._pump(plan, call, queue)) for call in range(plan.calls)]
        for task in tasks:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        try:
            try:
                async with asyncio.timeout(self.timeout_s):
                    first = await queue.get()
            except TimeoutError:
                raise self._failure(TimeoutError()) from None
            payload = first[1]
            if isinstance(payload, Exception):
                raise self._failure(payload, plan)
            if payload is None:
                raise self._failure(EngineError("the engine ended the stream without an answer"))
        except GatewayError as exc:
            _cancel(tasks)
            return _error_result(exc)
        except BaseException:  # cancelled (the client went away): stop the engine's work
            _cancel(tasks)
            raise
        return LocalStream(self, plan, queue, tasks, first)

    # ------------------------------------------------------------------ internals
    def _plan(self, path: str, body: bytes) -> _Plan:
        route = _ROUTES.get(path.rstrip("/"))
        if route is None:
            raise NotFound(
                f"The local engine of '{self.name}' serves /chat/completions and /completions only, not {path}.",
                code="unsupported_route",
            )
        include_usage: bool
        if route == "chat":
            chat: ChatCompletionRequest = parse_request(body, ChatCompletionRequest)
            _check_chat(chat)
            messages = _chat_turns(chat.messages)
            max_tokens: int | None
            if chat.max_completion_tokens is not None:
                max_tokens, max_param = chat.max_completion_tokens, "max_completion_tokens"
            else:
                max_tokens, max_param = chat.max_tokens, "max_tokens"
            params = self._check_n(_sampling(chat, max_tokens, max_param, self.default_max_tokens))
            include_usage = bool(chat.stream and chat.stream_options and chat.stream_options.include_usage)
            return _Plan("chat", chat.model, params, messages=messages, include_usage=include_usage)
        comp: CompletionRequest = parse_request(body, CompletionRequest)
        prompts = _completion_prompts(comp)
        params = self._check_n(_sampling(comp, comp.max_tokens, "max_tokens", self.default_max_tokens))
        include_usage = bool(comp.stream and comp.stream_options and comp.stream_options.include_usage)
        return _Plan("completions", comp.model, params, prompts=prompts, include_usage=include_usage)

    def _check_n(self, params: SamplingParams) -> SamplingParams:
        """400 for an ``n`` the engine cannot decode in one batch (its ``max_batch``, when it has one): one
        request must not take every row of the engine, or more memory than it was sized for."""
        limit = getattr(self.engine, "max_batch", None)
        if isinstance(limit, int) and params.n > limit:
            why = f"must be at most {limit} for '{self.name}' (its local engine decodes {limit} choices at once)"
            raise _invalid("n", why)
        return params

    def _call(self, plan: _Plan, call: int) -> Awaitable[list[Completion]]:
        if plan.route == "chat":
            return self.engine.chat(plan.messages, plan.params)
        return self.engine.complete(plan.prompts[call], plan.params)

    def _open(self, plan: _Plan, call: int) -> AsyncIterator[Delta]:
        if plan.route == "chat":
            return self.engine.stream_chat(plan.messages, plan.params)
        return self.engine.stream_complete(plan.prompts[call], plan.params)

    async def _run(self, plan: _Plan) -> list[list[Completion]]:
        """Every engine call of a non-streamed request (concurrently), or the ``GatewayError`` to answer."""
        try:
            async with asyncio.timeout(self.timeout_s):
                if plan.calls == 1:
                    return [await self._call(plan, 0)]
                try:
                    async with asyncio.TaskGroup() as group:
                        tasks = [group.create_task(_awaited(self._call(plan, i))) for i in range(plan.calls)]
                except BaseExceptionGroup as group_error:  # the first failure cancelled the other calls
                    raise _first_failure(group_error) from None
                return [task.result() for task in tasks]
        except GatewayError:
            raise
        except Exception as exc:  # TimeoutError (ours or the engine's), EngineError, or an engine bug
            raise self._failure(exc, plan) from None

    async def _pump(self, plan: _Plan, call: int, queue: asyncio.Queue[_Item]) -> None:
        """Feed one engine stream into ``queue``; cancelling this task closes the engine's generator."""
        deltas: AsyncIterator[Delta] | None = None
        try:
            deltas = self._open(plan, call)
            async for delta in deltas:
                queue.put_nowait((call, delta))
        except Exception as exc:
            queue.put_nowait((call, exc))
            return
        finally:
            aclose = getattr(deltas, "aclose", None)
            if aclose is not None:  # a no-op once the generator ended; else it runs the engine's cleanup
                try:
                    await aclose()
                except Exception:
                    logger.exception("backend %s: closing a local engine stream failed", self.name)
        queue.put_nowait((call, None))

    def _failure(self, exc: BaseException, plan: _Plan | None = None) -> GatewayError:
        """The error result for an engine call that failed before any response was sent. The engine's own text
        goes to the log (with the request id), never to the client. A prompt longer than the model's context is
        the client's to fix: 400 ``context_length_exceeded``, not counted against the backend."""
        if isinstance(exc, PromptTooLong):
            param = "prompt" if plan is not None and plan.route == "completions" else "messages"
            return BadRequest(
                f"This model's maximum context length is {exc.context} tokens. However, your {param} resulted in "
                f"{exc.prompt_tokens} tokens. Please reduce the length of the {param}.",
                param=param, code="context_length_exceeded",
            )
        what = f"The local engine of '{self.name}'"
        if isinstance(exc, EngineOverloaded):
            message = f"{what} is overloaded; retry later."
        elif isinstance(exc, EngineTimeout):
            message = f"{what} timed out."
        elif isinstance(exc, TimeoutError):
            message = f"{what} did not answer within {self.timeout_s:g}s."
        elif isinstance(exc, EngineError):
            message = f"{what} failed."
        else:
            logger.error("backend %s: the local engine raised unexpectedly", self.name, exc_info=exc)
            message = f"{what} failed unexpectedly; see the gateway's logs."
        if isinstance(exc, EngineError):
            logger.warning("backend %s: the local engine failed: %s", self.name, _describe(exc))
        err = engine_error(exc, message)
        self.on_error(self.name, str(err.status))
        return err

    def _broken(self, exc: BaseException) -> GatewayError:
        """The error raised from ``chunks()`` for a failure after the stream started: a timeout as before it
        started, any other failure ``UpstreamBroken``."""
        what = f"The local engine of '{self.name}'"
        if isinstance(exc, EngineError):
            logger.warning("backend %s: the local engine failed mid-stream: %s", self.name, _describe(exc))
        if engine_failure(exc) is TIMED_OUT:
            self.on_error(self.name, "timeout")
            if isinstance(exc, EngineTimeout):
                return engine_error(exc, f"{what} timed out mid-stream.")
            return engine_error(exc, f"{what} sent nothing for {self.timeout_s:g}s.")
        self.on_error(self.name, "stream_broken")
        if isinstance(exc, EngineError):
            return UpstreamBroken(f"{what} failed mid-stream.")
        logger.error("backend %s: the local engine raised unexpectedly mid-stream", self.name, exc_info=exc)
        return UpstreamBroken(f"{what} failed mid-stream; see the gateway's logs.")


async def _awaited(aw: Awaitable[list[Completion]]) -> list[Completion]:
    return await aw


def _first_failure(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The failure to report from a group: an ``EngineError`` first, else the first exception."""
    leaves: list[BaseException] = []
    stack: list[BaseException] = [group]
    while stack:
        exc = stack.pop(0)
        if isinstance(exc, BaseExceptionGroup):
            stack[:0] = exc.exceptions
        else:
            leaves.append(exc)
    for exc in leaves:
        if isinstance(exc, EngineError):
            return exc
    return leaves[0] if leaves else group


def _cancel(tasks: Sequence[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()


def _new_id(route: Route) -> str:
    return ("chatcmpl-" if route == "chat" else "cmpl-") + uuid.uuid4().hex


def _response_body(plan: _Plan, results: Sequence[Sequence[Completion]]) -> bytes:
    n = plan.params.n
    choices: list[dict[str, Any]] = []
    prompt_tokens = completion_tokens = 0
    for call, completions in enumerate(results):
        if completions:  # the prompt is counted once per prompt, however many choices it has
            prompt_tokens += completions[0].prompt_tokens
        for c in completions:
            completion_tokens += c.completion_tokens
            index = call * n + c.index
            if plan.route == "chat":
                choices.append({"index": index, "message": {"role": "assistant", "content": c.text},
                                "logprobs": None, "finish_reason": c.finish_reason})
            else:
                choices.append({"index": index, "text": c.text, "logprobs": None, "finish_reason": c.finish_reason})
    choices.sort(key=lambda choice: int(choice["index"]))
    return orjson.dumps({
        "id": _new_id(plan.route),
        "object": "chat.completion" if plan.route == "chat" else "text_completion",
        "created": int(time.time()),
        "model": plan.model,
        "choices": choices,
        "usage": usage_object(prompt_tokens, completion_tokens),
    })


class LocalStream:
    """An open stream from the local engine (``StreamHandle``): SSE events shaped like vLLM's (written by
    ``models.wire.chunks.ChunkWriter``), then ``[DONE]``.

    Chat: each choice starts with a ``{"role": "assistant", "content": ""}`` delta, then content deltas, then an
    empty delta with its ``finish_reason``. Completions: ``text`` deltas, then ``""`` with the finish reason.
    With ``stream_options.include_usage`` every chunk has ``"usage": null`` and a last chunk with
    ``"choices": []`` carries the usage. Deltas already waiting are sent in one write.
    """

    replica_index = 0
    headers: RawHeaders = ()

    def __init__(
        self, backend: LocalBackend, plan: _Plan, queue: asyncio.Queue[_Item], tasks: list[asyncio.Task[None]],
        first: _Item,
    ) -> None:
        self._backend = backend
        self._plan = plan
        self._queue = queue
        self._tasks = tasks
        self._first: _Item | None = first
        self._closed = False
        #: Seconds spent waiting for the engine's next delta inside ``chunks`` (the gateway-overhead measure).
        self.waited_s = 0.0
        chat = plan.route == "chat"
        self._chunks = ChunkWriter(
            chat, plan.include_usage, id=_new_id(plan.route), created=int(time.time()), model=plan.model
        )

    async def _next(self) -> _Item:
        clock = time.perf_counter
        t = clock()
        try:
            async with asyncio.timeout(self._backend.timeout_s):
                return await self._queue.get()
        except TimeoutError:
            raise self._backend._broken(TimeoutError()) from None
        finally:  # a wait that ends in a timeout or a cancellation is engine time too
            self.waited_s += clock() - t

    async def chunks(self) -> AsyncIterator[bytes]:
        """SSE bytes; an engine failure raises ``UpstreamBroken``/``UpstreamTimeout``."""
        if self._closed or self._first is None:
            raise UpstreamBroken(f"The stream from the local engine of '{self._backend.name}' is closed.")
        plan = self._plan
        n = plan.params.n
        out: list[bytes] = []
        chunks = self._chunks
        if plan.route == "chat":
            out.extend(chunks.role(i) for i in range(n * plan.calls))
        finished = [0] * plan.calls
        counted = [False] * plan.calls
        running = plan.calls
        prompt_tokens = completion_tokens = 0
        item: _Item | None = self._first
        self._first = None
        failure: GatewayError | None = None
        try:
            while running:
                if item is None:
                    if out:
                        yield b"".join(out)
                        out = []
                    item = await self._next()
                call, payload = item
                item = None
                if payload is None:
                    running -= 1
                    if finished[call] < n:
                        failure = self._backend._broken(
                            EngineError("the engine ended a stream before every choice finished")
                        )
                        break
                elif isinstance(payload, Exception):
                    failure = self._backend._broken(payload)
                    break
                else:
                    index = call * n + payload.index
                    if payload.text:
                        out.append(chunks.text(index, payload.text))
                    if payload.finish_reason is not None:
                        finished[call] += 1
                        completion_tokens += payload.completion_tokens or 0
                        if not counted[call] and payload.prompt_tokens is not None:
                            counted[call] = True
                            prompt_tokens += payload.prompt_tokens
                        out.append(chunks.finish(index, payload.finish_reason))
                if running and not self._queue.empty():
                    item = self._queue.get_nowait()
            if failure is not None:
                self.close()  # stop the other engine calls before the client hears of the failure
                if out:  # what the engine produced before it failed still reaches the client
                    yield b"".join(out)
                raise failure
            if plan.include_usage:
                chunks.usage = usage_object(prompt_tokens, completion_tokens)
                out.append(chunks.last())
            out.append(DONE)
            yield b"".join(out)
        finally:
            self.close()

    def close(self, complete: bool = False) -> None:
        """Stop the engine's work if it is still running (idempotent)."""
        if self._closed:
            return
        self._closed = True
        _cancel(self._tasks)
