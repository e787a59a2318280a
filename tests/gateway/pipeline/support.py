"""Test doubles for the pipeline tests: deterministic helper engines, a fake ``Backend``, and a small app.

* :class:`RewriterEngine` answers every call with a fixed rewrite (:data:`REWRITTEN` unless told otherwise).
* :class:`AlignerEngine` answers ``"CORRECTED: " + answer``, reading the answer back out of the rendered
  template (``aligner-v1``, ``aligner-v2`` or ``aligner-chat``); streams it word by word.
* Both can fail (``error``), before the first delta or after it (``error_after_first``, ``error_after``),
  wait (``delay_s`` before answering, ``token_delay_s`` between streamed words) or block until cancelled
  (``block``); ``error_if`` / ``block_if`` limit failing / blocking to the prompts that contain a text.
* :class:`FakeBackend` plays the backend LLM: ``Answer <i>: <last user text>`` per choice (``n``; ``fake.reply``:
  that text instead), tool calls for the choices listed in the request's ``fake.tool_choices`` (or all of them
  with ``tool_choice: "required"``), an error status with ``fake.status``; streams in the backend's own SSE
  format, word by word, ``fake.token_delay_s`` apart; ``fake.cut_after`` breaks the stream after that many
  events (``UpstreamBroken``), ``fake.error_after`` sends an ``error`` event then ``[DONE]`` after that many.
  Each stream records when it sent its last event (``FakeStream.ended_at``).
* :func:`make_rig` wires the gateway's routers and middleware around them (as ``create_app`` does), with a
  trace store when given one, and shadow mode when given ``shadow`` settings with a share above 0.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.app import GatewayApp
from gateway.auth import ApiKeyAuth
from gateway.config import ExperimentSettings, HelperSettings, HelpersSettings, ShadowSettings
from gateway.errors import UpstreamBroken
from gateway.feedback.service import FeedbackService
from gateway.inference.service import InferenceService
from gateway.pipeline.arms import ArmChooser
from gateway.pipeline.gate import Gate
from gateway.pipeline.helpers import Helpers, OnError, StreamMode
from gateway.pipeline.pipeline import Pipeline
from gateway.pipeline.shadow import ShadowRunner
from gateway.store.store import Store
from gateway.upstream.protocol import UpstreamResult
from models.aligner import Aligner
from models.engine import ChatTurn, Completion, Delta, Engine, FinishReason, SamplingParams
from models.rewriter import Rewriter
from models.wire.sse import iter_events

#: The rewriter engine's fixed answer (10 words: passes the word-ratio guards for 2..20-word prompts).
REWRITTEN = "Please explain step by step how to bake bread at home"
CORRECTED = "CORRECTED: "
MODEL = "m"
TOOL_ARGUMENTS = '{"city": "Paris"}'

Prompt = str | tuple[ChatTurn, ...]
_WORD = re.compile(r"\S+\s*")


def words(text: str) -> list[str]:
    """``text`` cut into words with their trailing whitespace (they concatenate back to ``text``)."""
    return _WORD.findall(text)


def answer_of(prompt: Prompt) -> str:
    """The answer (a sentence template: the last sentence) an aligner template carries (the fake corrects it)."""
    text = prompt if isinstance(prompt, str) else prompt[-1].content
    if "##Answer_Last_Sentence: " in text:  # stream, stream-chat
        return text.split("##Answer_Last_Sentence: ", 1)[1].rsplit(" | ##Your_Revision: ", 1)[0]
    if isinstance(prompt, tuple):  # aligner-chat: user "Question: {q}\nAnswer: {a}"
        return prompt[-1].content.split("\nAnswer: ", 1)[1]
    if "##Answer: " in prompt:  # aligner-v2
        return prompt.split("##Answer: ", 1)[1].rsplit("\n##Correction:", 1)[0]
    return prompt.rsplit(" | ", 1)[1].removesuffix(" ASSISTANT:")  # aligner-v1


@dataclass
class Call:
    method: str
    prompt: Prompt
    params: SamplingParams


@dataclass
class ScriptedEngine:
    """The shared machinery of the two fake helper engines; ``reply(prompt)`` is what it answers."""

    name: str = "scripted"
    error: Exception | None = None
    error_after_first: bool = False
    #: With ``error_after_first``: how many deltas go out before the error.
    error_after: int = 1
    #: Only prompts containing this text fail (all of them when None).
    error_if: str | None = None
    #: Only prompts containing this text block (all of them when None).
    block_if: str | None = None
    delay_s: float = 0.0
    token_delay_s: float = 0.0
    block: bool = False
    finish_reason: FinishReason = "stop"
    calls: list[Call] = field(default_factory=list)
    cancelled: int = 0
    streams_closed: int = 0
    entered: asyncio.Event = field(default_factory=asyncio.Event)

    def reply(self, prompt: Prompt) -> str:
        raise NotImplementedError

    @staticmethod
    def _targets(prompt: Prompt, text: str | None) -> bool:
        return text is None or text in str(prompt)

    async def _wait(self, prompt: Prompt) -> None:
        try:
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            if self.block and self._targets(prompt, self.block_if):
                await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise

    async def _whole(self, method: str, prompt: Prompt, params: SamplingParams) -> list[Completion]:
        self.calls.append(Call(method, prompt, params))
        self.entered.set()
        await self._wait(prompt)
        if self.error is not None and self._targets(prompt, self.error_if):
            raise self.error
        text = self.reply(prompt)
        return [Completion(text, self.finish_reason, 1, len(text.split()))]

    async def _stream(self, method: str, prompt: Prompt, params: SamplingParams) -> AsyncIterator[Delta]:
        self.calls.append(Call(method, prompt, params))
        self.entered.set()
        error = self.error if self._targets(prompt, self.error_if) else None
        try:
            await self._wait(prompt)
            if error is not None and not self.error_after_first:
                raise error
            pieces = words(self.reply(prompt))
            for i, piece in enumerate(pieces):
                if i and self.token_delay_s:
                    await asyncio.sleep(self.token_delay_s)
                yield Delta(piece)
                if error is not None and i + 1 >= self.error_after:
                    raise error
            yield Delta("", finish_reason=self.finish_reason, prompt_tokens=1, completion_tokens=len(pieces))
        finally:
            self.streams_closed += 1

    async def complete(self, prompt: str, params: SamplingParams) -> list[Completion]:
        return await self._whole("complete", prompt, params)

    async def chat(self, messages: Sequence[ChatTurn], params: SamplingParams) -> list[Completion]:
        return await self._whole("chat", tuple(messages), params)

    def stream_complete(self, prompt: str, params: SamplingParams) -> AsyncIterator[Delta]:
        return self._stream("stream_complete", prompt, params)

    def stream_chat(self, messages: Sequence[ChatTurn], params: SamplingParams) -> AsyncIterator[Delta]:
        return self._stream("stream_chat", tuple(messages), params)

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass


@dataclass
class RewriterEngine(ScriptedEngine):
    name: str = "fake-rewriter"
    text: str = REWRITTEN

    def reply(self, prompt: Prompt) -> str:
        return self.text


@dataclass
class AlignerEngine(ScriptedEngine):
    name: str = "fake-aligner"
    #: Answer this instead of the correction, when set ("" plays an aligner that outputs nothing).
    text: str | None = None

    def reply(self, prompt: Prompt) -> str:
        return CORRECTED + answer_of(prompt) if self.text is None else self.text


# ---------------------------------------------------------------------------------------------- backend


class FakeStream:
    """A ``StreamHandle`` over ready-made SSE events (``delay_s`` apart; ``cut_after``: break after that many)."""

    def __init__(self, events: list[bytes], delay_s: float = 0.0, cut_after: int | None = None) -> None:
        self.replica_index = 0
        self.waited_s = 0.0
        self.headers: tuple[tuple[bytes, bytes], ...] = ()
        self.closed = False
        self.closed_complete: bool | None = None
        #: ``loop.time()`` when the last event went out (None until then).
        self.ended_at: float | None = None
        self._events = events
        self._delay_s = delay_s
        self._cut_after = cut_after

    async def chunks(self) -> AsyncIterator[bytes]:
        for i, event in enumerate(self._events):
            if i == self._cut_after:
                raise UpstreamBroken("Backend 'm' broke off the response mid-stream.")
            await asyncio.sleep(self._delay_s if i else 0)
            if i == len(self._events) - 1:
                self.ended_at = asyncio.get_running_loop().time()
            yield event

    def close(self, complete: bool = False) -> None:
        self.closed = True
        self.closed_complete = complete


@dataclass
class FakeBackend:
    """A ``Backend`` answering ``Answer <i>: <last user text>`` (chat) or ``Answer <i>: <prompt>`` (completions)."""

    name: str = MODEL
    upstream_model: str | None = None
    requests: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    streams: list[FakeStream] = field(default_factory=list)

    def answer(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        fake = body.get("fake") or {}
        if fake.get("status"):
            return fake["status"], {"error": {"message": "backend exploded", "type": "server_error", "param": None,
                                              "code": fake["status"]}}
        n = body.get("n") or 1
        chat = path == "/chat/completions"
        if chat:
            said = next(_text(m.get("content")) for m in reversed(body["messages"]) if m.get("role") == "user")
        else:
            said = body["prompt"] if isinstance(body["prompt"], str) else "many"
        tool_choices = set(fake.get("tool_choices") or ())
        if chat and body.get("tools") and body.get("tool_choice") == "required":
            tool_choices = set(range(n))
        choices: list[dict[str, Any]] = []
        for i in range(n):
            text = fake["reply"] if isinstance(fake.get("reply"), str) else f"Answer {i}: {said}"
            if not chat:
                choices.append({"index": i, "text": text, "logprobs": None, "finish_reason": "stop"})
            elif i in tool_choices:
                call = {"id": f"call_{i}", "type": "function",
                        "function": {"name": "get_weather", "arguments": TOOL_ARGUMENTS}}
                choices.append({"index": i, "message": {"role": "assistant", "content": None, "tool_calls": [call]},
                                "logprobs": None, "finish_reason": "tool_calls"})
            else:
                choices.append({"index": i, "message": {"role": "assistant", "content": text},
                                "logprobs": {"content": []} if body.get("logprobs") else None,
                                "finish_reason": "stop"})
        usage = {"prompt_tokens": 5, "completion_tokens": 4 * n, "total_tokens": 5 + 4 * n}
        return 200, {"id": "chatcmpl-1" if chat else "cmpl-1",
                     "object": "chat.completion" if chat else "text_completion",
                     "created": 1700000000, "model": body.get("model"), "choices": choices, "usage": usage}

    def _record(self, path: str, body: bytes) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(body)
        self.requests.append((path, data))
        return data

    async def fetch(self, path: str, body: bytes) -> UpstreamResult:
        data = self._record(path, body)
        await asyncio.sleep(0)
        status, answer = self.answer(path, data)
        return UpstreamResult(status, "application/json", orjson.dumps(answer), 0)

    async def open_stream(self, path: str, body: bytes) -> FakeStream | UpstreamResult:
        data = self._record(path, body)
        status, answer = self.answer(path, data)
        if status != 200:
            return UpstreamResult(status, "application/json", orjson.dumps(answer), 0)
        chat = path == "/chat/completions"
        base = {k: answer[k] for k in ("id", "created", "model")}
        base["object"] = "chat.completion.chunk" if chat else "text_completion"
        events: list[bytes] = []

        def event(choice: dict[str, Any]) -> bytes:
            return b"data: " + orjson.dumps({**base, "choices": [choice]}) + b"\n\n"

        for choice in answer["choices"]:
            i = choice["index"]
            if chat:
                events.append(event({"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}))
                text = choice["message"]["content"] or ""
                for k, call in enumerate(choice["message"].get("tool_calls") or []):  # vLLM: name, then arguments
                    opening = {**call, "index": k, "function": {"name": call["function"]["name"], "arguments": ""}}
                    events.append(event({"index": i, "delta": {"tool_calls": [opening]}, "finish_reason": None}))
                    arguments = {"index": k, "function": {"arguments": call["function"]["arguments"]}}
                    events.append(event({"index": i, "delta": {"tool_calls": [arguments]}, "finish_reason": None}))
            else:
                text = choice["text"]
            for piece in words(text):
                delta = {"delta": {"content": piece}} if chat else {"text": piece}
                events.append(event({"index": i, **delta, "finish_reason": None}))
            end: dict[str, Any] = {"delta": {}} if chat else {"text": ""}
            events.append(event({"index": i, **end, "finish_reason": choice["finish_reason"]}))
        if (data.get("stream_options") or {}).get("include_usage"):
            events.append(b"data: " + orjson.dumps({**base, "choices": [], "usage": answer["usage"]}) + b"\n\n")
        fake = data.get("fake") or {}
        if fake.get("error_after") is not None:
            error = {"error": {"message": "backend ran out of memory", "type": "server_error", "param": None,
                               "code": 500}}
            events = [*events[: fake["error_after"]], b"data: " + orjson.dumps(error) + b"\n\n"]
        events.append(b"data: [DONE]\n\n")
        stream = FakeStream(events, float(fake.get("token_delay_s") or 0.0), fake.get("cut_after"))
        self.streams.append(stream)
        return stream

    async def readiness(self) -> tuple[int, int]:
        return 1, 1

    async def close(self) -> None:
        pass


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    return " ".join(p["text"] for p in content or [] if isinstance(p, dict) and p.get("type") == "text")


# ---------------------------------------------------------------------------------------------- the app


@dataclass
class Rig:
    """One app with its fakes."""

    app: GatewayApp
    backend: FakeBackend
    rewriter: RewriterEngine | None
    aligner: AlignerEngine | None
    #: Shadow mode's runner (None: off).
    shadow: ShadowRunner | None = None


def make_rig(
    *,
    rewriter: RewriterEngine | None = None,
    aligner: AlignerEngine | None = None,
    with_rewriter: bool = True,
    with_aligner: bool = True,
    rewriter_on_error: OnError = "skip",
    aligner_on_error: OnError = "skip",
    rewriter_template: str = "bpo",
    aligner_template: str = "aligner-v2",
    aligner_stream: StreamMode = "buffer",
    aligner_engine: Engine | None = None,
    arms: dict[str, float] | None = None,
    allow_override: bool = True,
    rewriter_timeout_s: float = 30.0,
    aligner_timeout_s: float = 30.0,
    store: Store | None = None,
    api_keys: list[str] | None = None,
    experiment: str = "default",
    shadow: ShadowSettings | None = None,
    gate: Gate | None = None,
) -> Rig:
    """The gateway's routers and middleware around a ``FakeBackend`` and the fake helpers (as ``create_app``);
    ``aligner_engine``: the aligner runs on that engine instead of the fake one; ``gate``: the aligner's reward
    gate."""
    rw = (rewriter or RewriterEngine()) if with_rewriter else None
    al = (aligner or AlignerEngine()) if with_aligner else None
    helpers = Helpers(
        Rewriter(rw, rewriter_template, timeout_s=rewriter_timeout_s) if rw is not None else None,
        Aligner(aligner_engine or al, aligner_template, timeout_s=aligner_timeout_s) if al is not None else None,
        rewriter_on_error=rewriter_on_error, aligner_on_error=aligner_on_error, aligner_stream=aligner_stream,
        gate=gate,
    )
    remote = HelperSettings(url="http://helpers.invalid/v1", model="helper")
    helper_settings = HelpersSettings(rewriter=remote if rw is not None else None,
                                      aligner=remote if al is not None else None)
    experiment_settings = ExperimentSettings(name=experiment, arms=arms or {"control": 1},
                                             allow_override=allow_override, shadow=shadow or ShadowSettings())
    runner = (ShadowRunner(experiment_settings.shadow, helpers, store, experiment=experiment)
              if store is not None and experiment_settings.shadow.share > 0 else None)
    backend = FakeBackend()
    auth = ApiKeyAuth(api_keys or [])
    app = GatewayApp()
    app.state.inference = InferenceService(
        {backend.name: backend}, auth, max_body_bytes=1_000_000,
        arms=ArmChooser(experiment_settings, helper_settings), pipeline=Pipeline(helpers),
        store=store, log_bodies=store.log_bodies if store is not None else True, shadow=runner,
    )
    app.state.feedback = FeedbackService(store, auth)
    return Rig(app, backend, rw, al, runner)


def sse_json(raw: bytes) -> tuple[list[dict[str, Any]], bool]:
    """The JSON events of an SSE body, and whether it ended with ``[DONE]`` (nothing after it)."""
    datas = [data for _, data in iter_events(raw)]
    done = bool(datas) and datas[-1] == "[DONE]"
    assert "[DONE]" not in datas[:-1], datas
    return [json.loads(d) for d in (datas[:-1] if done else datas)], done

