"""The request's path through the gateway: one explicit sequence of steps, the same for every arm.

Each step runs only when the request's arm asks for it; the control arm is this pipeline with no steps.

1. **rewrite** (``rewrite``, ``rewrite+align``) the last user message (chat) or the prompt (completions, a single
   string) with the rewriter;
2. **backend**: the request goes to the backend — streamed straight through when no correction follows, else
   fetched whole. A body no step changed is the client's own bytes (only ``model`` is replaced, for a backend
   with ``upstream_model``), and an answer no step changes is the backend's own bytes, whole or event by event;
3. **align** (``align``, ``rewrite+align``) every text choice of the answer (tool-call choices pass through
   uncorrected); for a streamed request the correction itself is streamed as the aligner generates it, or, with
   ``helpers.aligner.stream: sentence``, the backend is streamed and each sentence is corrected and sent while
   the backend goes on generating (``gateway/pipeline/sentences.py``). With the aligner's reward gate
   (``helpers.aligner.gate``, ``gateway/pipeline/gate.py``) each correction is scored against the answer it
   corrects and served only when it scores higher (by more than the margin): the correction is made whole and
   gated before anything is sent, and a streamed request gets the gated answer as a stream of whole choices
   (each choice's text in one chunk); in sentence mode each sentence's correction is gated before it is sent;
4. **respond**, with the ``aligngate`` trace object when ``X-Aligngate-Trace: 1`` asked for it (the last chunk of
   a stream). The upstream's own response headers are passed on (``gateway/respond.py``).

Time waiting on the backend and the helpers is accounted by the request context (``waited``, ``track``). Bodies
are parsed and re-serialised with the standard library's codec, which keeps every value exact (integers of any
size included).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any

from starlette.types import ASGIApp

from gateway.config import Arm
from gateway.context import RequestContext
from gateway.errors import GatewayError, error_frame
from gateway.pipeline.gate import GateVerdict
from gateway.pipeline.helpers import AlignOutcome, CorrectionStream, Helpers
from gateway.pipeline.sentences import SentenceStream
from gateway.pipeline.trace import GateTrace, SentenceTrace, Trace
from gateway.pipeline.usage import add_aligner_tokens, delivered_usage
from gateway.respond import EventStream, relay_result, relay_stream, upstream_headers
from gateway.upstream.protocol import Backend, UpstreamResult
from models.aligner import AlignResult, question_from_messages
from models.limits import ClientLimits
from models.wire.chunks import ChunkWriter
from models.wire.read import choice_text, set_choice_text, usage_counts
from models.wire.sse import DONE, encode_event

logger = logging.getLogger(__name__)

CHAT_PATH = "/chat/completions"
COMPLETIONS_PATH = "/completions"


def _dumps(data: Any) -> bytes:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()


@dataclass(slots=True)
class PipelineRequest:
    """One validated request entering the pipeline."""

    ctx: RequestContext
    backend: Backend
    path: str  # CHAT_PATH or COMPLETIONS_PATH
    #: The client's body, as it came.
    raw: bytes
    arm: Arm
    trace_on: bool
    stream: bool
    #: The parsed body (a mutable copy), once a step has read it.
    data: dict[str, Any] | None = None
    #: The user's own messages (read before any rewrite; a completions prompt as one user turn), which the
    #: aligner's reward gate scores answers to.
    prompt_messages: list[dict[str, Any]] | None = None

    @property
    def chat(self) -> bool:
        return self.path == CHAT_PATH

    def parsed(self) -> dict[str, Any]:
        if self.data is None:
            self.data = json.loads(self.raw)
        return self.data

    def body(self) -> bytes:
        """What the backend is sent: the client's bytes while no step changed them, with the backend's model."""
        model = self.backend.upstream_model
        if self.data is None:
            if model is None:
                return self.raw
            self.parsed()
        assert self.data is not None
        if model is not None:
            self.data["model"] = model
        return _dumps(self.data)


class Pipeline:
    def __init__(self, helpers: Helpers) -> None:
        self.helpers = helpers

    async def run(self, req: PipelineRequest) -> ASGIApp:
        """The response to send (raises ``GatewayError`` for an error to answer instead)."""
        trace: Trace | None = None
        if req.arm is not Arm.CONTROL or req.trace_on:
            trace = Trace(request_id=req.ctx.request_id, arm=req.arm.value)
            if req.ctx.capture is not None:
                req.ctx.capture.trace = trace
        question = self._question(req) if req.arm.aligns else ""
        if req.arm.aligns and self.helpers.gate is not None:
            req.prompt_messages = self._prompt_messages(req)
        if req.arm.rewrites:
            assert trace is not None
            await self._rewrite(req, trace)
        if req.arm.aligns:
            assert trace is not None
            return await self._align(req, trace, question)
        if req.stream:
            return await self._relay_stream(req, trace)
        return await self._relay(req, trace)

    # ------------------------------------------------------------------ step 1: rewrite

    @staticmethod
    def _question(req: PipelineRequest) -> str:
        """The aligner's question: always the user's own words, read before any rewrite."""
        data = req.parsed()
        if req.chat:
            return question_from_messages(data.get("messages") or [])
        prompt = data.get("prompt")
        return prompt if isinstance(prompt, str) else ""

    @staticmethod
    def _prompt_messages(req: PipelineRequest) -> list[dict[str, Any]]:
        """The user's own messages, copied before any rewrite (a completions prompt string: one user turn)."""
        data = req.parsed()
        if req.chat:
            return [dict(m) for m in data.get("messages") or [] if isinstance(m, dict)]
        prompt = data.get("prompt")
        return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else []

    async def _rewrite(self, req: PipelineRequest, trace: Trace) -> None:
        data = req.parsed()
        if not req.chat and not isinstance(data.get("prompt"), str):
            # a list of prompts or token ids: nothing the rewriter can read
            trace.rewriter_skipped = "unsupported_prompt"
            return
        if req.chat:
            outcome = await req.ctx.waited(self.helpers.rewrite(data["messages"]))
            data["messages"] = outcome.messages
        else:
            outcome = await req.ctx.waited(self.helpers.rewrite([{"role": "user", "content": data["prompt"]}]))
            if outcome.rewritten is not None:
                data["prompt"] = outcome.rewritten
        trace.helper_ms.rewriter = round(outcome.elapsed_s * 1000, 3)
        trace.rewritten_prompt = outcome.rewritten
        trace.rewriter_skipped = outcome.skipped
        trace.helper_tokens["rewriter"] = outcome.tokens

    # ------------------------------------------------------------------ step 2: backend

    async def _fetch(self, req: PipelineRequest) -> UpstreamResult:
        ctx = req.ctx
        result = await ctx.waited(req.backend.fetch(req.path, req.body()))
        ctx.replica = result.replica
        return result

    async def _relay(self, req: PipelineRequest, trace: Trace | None) -> ASGIApp:
        """The backend's whole answer, relayed (with the trace added when asked for)."""
        result = await self._fetch(req)
        if req.ctx.capture is not None:
            req.ctx.capture.response_body = result.body
        if trace is None or not req.trace_on or result.status != 200:
            return relay_result(result)
        try:
            answer = json.loads(result.body)
        except ValueError:
            return relay_result(result)
        answer["aligngate"] = trace.as_json()
        return relay_result(result, _dumps(answer))

    async def _relay_stream(self, req: PipelineRequest, trace: Trace | None) -> ASGIApp:
        """The backend's streamed answer, relayed event by event (the trace in a last chunk when asked for)."""
        ctx = req.ctx
        opened = await ctx.waited(req.backend.open_stream(req.path, req.body()))
        if isinstance(opened, UpstreamResult):  # refused before streaming: a plain JSON answer
            ctx.replica = opened.replica
            return relay_result(opened)
        ctx.replica = opened.replica_index
        ctx.track(opened)
        tail = self._trace_chunk(req, trace) if trace is not None and req.trace_on else None
        return EventStream(ctx, relay_stream(ctx, opened, tail), upstream_headers(opened.headers))

    def _trace_chunk(self, req: PipelineRequest, trace: Trace) -> bytes:
        obj = "chat.completion.chunk" if req.chat else "text_completion"
        return encode_event({"object": obj, "model": req.parsed().get("model"), "choices": [],
                             "aligngate": trace.as_json()})

    # ------------------------------------------------------------------ step 3: align

    async def _align(self, req: PipelineRequest, trace: Trace, question: str) -> ASGIApp:
        """Fetch the whole answer and correct it: whole, or as a stream of the correction; or, in sentence mode,
        stream the answer and correct it sentence by sentence."""
        data = req.parsed()
        capture = req.ctx.capture
        include_usage = bool((data.get("stream_options") or {}).get("include_usage"))
        limits = ClientLimits.of_request(data, req.chat)  # read before the body is changed for the backend
        if req.stream and self.helpers.sentence_stream:
            return await self._align_sentences(req, trace, question, include_usage, limits)
        if req.stream:
            data["stream"] = False
            data.pop("stream_options", None)
        result = await self._fetch(req)
        if result.status != 200:
            return relay_result(result)
        try:
            answer = json.loads(result.body)
        except ValueError:
            return relay_result(result)
        if capture is not None:
            capture.prompt_tokens, capture.completion_tokens = usage_counts(answer)
        if req.stream and self.helpers.gate is None:
            return await self._stream_corrected(req, trace, question, answer, include_usage, result, limits)
        await self._align_all(req, trace, question, answer, limits)
        choices = answer.get("choices") or []
        if capture is not None:
            capture.raw_answer = _first_choice(trace.original_content)
            capture.final_answer = choice_text(choices[0], req.chat) if choices else None
        if req.stream:  # gated: the whole answer, streamed choice by choice
            chunks = ChunkWriter.for_answer(answer, req.chat, include_usage)
            events = self._whole_events(req, trace, choices, chunks)
            return EventStream(req.ctx, events, upstream_headers(result.headers))
        if req.trace_on:
            answer["aligngate"] = trace.as_json()
        return relay_result(result, _dumps(answer))

    async def _align_sentences(
        self, req: PipelineRequest, trace: Trace, question: str, include_usage: bool, limits: ClientLimits
    ) -> ASGIApp:
        """Stream the backend's answer and correct it sentence by sentence as it comes."""
        ctx = req.ctx
        data = req.parsed()
        options = data.get("stream_options")
        # the backend's usage is asked for always: the store records it; the client gets it when it asked
        data["stream_options"] = {**(options if isinstance(options, dict) else {}), "include_usage": True}
        opened = await ctx.waited(req.backend.open_stream(req.path, req.body()))
        if isinstance(opened, UpstreamResult):  # refused before streaming: a plain JSON answer
            ctx.replica = opened.replica
            return relay_result(opened)
        ctx.replica = opened.replica_index
        stream = SentenceStream(ctx, self.helpers, opened, question=question, chat=req.chat,
                                include_usage=include_usage, trace=trace, trace_on=req.trace_on, limits=limits,
                                messages=req.prompt_messages)
        ctx.track(stream)
        return EventStream(ctx, stream.events(), upstream_headers(opened.headers))

    async def _align_all(
        self, req: PipelineRequest, trace: Trace, question: str, answer: dict[str, Any], limits: ClientLimits
    ) -> None:
        choices = answer.get("choices") or []
        slots = [choice_text(c, req.chat) for c in choices]
        tasks = [
            asyncio.ensure_future(self.helpers.correct(question, text, limits,
                                                       answer_cut=choice.get("finish_reason") == "length"))
            for choice, text in zip(choices, slots, strict=True) if text is not None
        ]
        try:
            outcomes = await req.ctx.waited(asyncio.gather(*tasks))
        except BaseException:
            for task in tasks:  # one failed (on_error=fail): the other corrections are not wanted any more
                task.cancel()
            raise
        verdicts = await self._gate(req, [t for t in slots if t is not None], outcomes)
        it = iter(zip(outcomes, verdicts, strict=True))
        originals: list[str | None] = []
        skipped: list[str | None] = []
        sentences: list[list[SentenceTrace] | None] = []
        gates: list[GateTrace | None] = []
        served: list[AlignResult | None] = []  # the aligner's result of each choice served corrected
        for choice, text in zip(choices, slots, strict=True):
            if text is None:
                originals.append(None)
                skipped.append("tool_calls")
                sentences.append(None)
                gates.append(None)
                continue
            outcome, verdict = next(it)
            originals.append(text)
            sentences.append([SentenceTrace.of(r) for r in outcome.result.sentences] if outcome.result else None)
            gates.append(verdict)
            if verdict is not None and verdict.skipped is not None:  # the gate kept the backend's answer
                skipped.append(verdict.skipped)
                served.append(None)
                continue
            skipped.append(outcome.skipped)
            served.append(outcome.result)
            ended = outcome.result.finish_reason if outcome.result is not None else None
            if outcome.corrected or ended is not None:
                set_choice_text(choice, req.chat, outcome.text)
            if ended is not None:
                choice["finish_reason"] = ended
        add_aligner_tokens(trace, [o.result for o in outcomes])
        if "usage" in answer:
            answer["usage"] = delivered_usage(answer["usage"], len(choices), served, trace)
        if any(g is not None for g in gates):
            trace.gate = gates[0] if len(gates) == 1 else gates
        trace.helper_ms.aligner = round(max((o.elapsed_s for o in outcomes), default=0.0) * 1000, 3)
        trace.original_content = originals[0] if len(originals) == 1 else originals
        trace.aligner_skipped = skipped[0] if len(skipped) == 1 else skipped
        if self.helpers.aligner is not None and self.helpers.aligner.sentence:
            trace.sentences = sentences[0] if len(sentences) == 1 else sentences

    async def _gate(
        self, req: PipelineRequest, texts: list[str], outcomes: list[AlignOutcome]
    ) -> list[GateVerdict | None]:
        """The reward gate's verdict on each text choice's correction (None: not judged: no gate, no correction)."""
        gate = self.helpers.gate
        judged = [i for i, o in enumerate(outcomes) if o.corrected] if gate is not None else []
        verdicts: list[GateVerdict | None] = [None] * len(outcomes)
        if gate is None or not judged:
            return verdicts
        pairs = [(texts[i], outcomes[i].text) for i in judged]
        for i, verdict in zip(judged, await req.ctx.waited(gate.judge(req.prompt_messages or [], pairs)),
                              strict=True):
            verdicts[i] = verdict
        return verdicts

    async def _whole_events(
        self, req: PipelineRequest, trace: Trace, choices: list[dict[str, Any]], chunks: ChunkWriter
    ) -> AsyncGenerator[bytes, None]:
        """A whole (corrected and gated) answer as a stream: each choice opened, its text (or tool calls) in one
        chunk, finished; then the usage and trace chunk."""
        for i, choice in enumerate(choices):
            index = choice.get("index", i)
            yield chunks.role(index)
            text = choice_text(choice, req.chat)
            if text is None:
                yield chunks.tool_calls(index, choice)
            elif text:
                yield chunks.text(index, text)
            yield chunks.finish(index, choice.get("finish_reason"))
        yield chunks.last({"aligngate": trace.as_json()} if req.trace_on else None) + DONE

    async def _stream_corrected(
        self, req: PipelineRequest, trace: Trace, question: str, answer: dict[str, Any], include_usage: bool,
        result: UpstreamResult, limits: ClientLimits,
    ) -> ASGIApp:
        """Stream the correction of a whole backend answer, choice after choice."""
        ctx = req.ctx
        choices = answer.get("choices") or []
        texts = [choice_text(c, req.chat) for c in choices]
        trace.original_content = texts[0] if len(texts) == 1 else texts
        if ctx.capture is not None:
            ctx.capture.raw_answer = texts[0] if texts else None
        first: tuple[CorrectionStream, str] | None = None
        if texts and texts[0] is not None:
            # Wait for the first corrected text before answering, so that on_error=fail can still be a 502.
            stream = self.helpers.stream_correct(question, texts[0], limits)
            ctx.track(stream)
            try:
                first = (stream, await stream.first())
            except BaseException:
                await stream.aclose()
                raise
        chunks = ChunkWriter.for_answer(answer, req.chat, include_usage)
        events = self._correction_events(req, trace, question, choices, texts, chunks, first, limits)
        return EventStream(ctx, events, upstream_headers(result.headers))

    async def _correction_events(
        self,
        req: PipelineRequest,
        trace: Trace,
        question: str,
        choices: list[dict[str, Any]],
        texts: list[str | None],
        chunks: ChunkWriter,
        first: tuple[CorrectionStream, str] | None,
        limits: ClientLimits,
    ) -> AsyncGenerator[bytes, None]:
        """The stream's events; ``first`` is choice 0's correction stream and its first delta."""
        ctx = req.ctx
        skipped: list[str | None] = []
        sentences: list[list[SentenceTrace] | None] = []
        results: list[AlignResult | None] = []
        # choice 0's corrected text, for the trace store (kept only when it records bodies)
        sent: list[str] | None = [] if ctx.capture is not None and ctx.capture.bodies else None
        aligner_s = 0.0
        stream: CorrectionStream | None = None
        try:
            for i, (choice, text) in enumerate(zip(choices, texts, strict=True)):
                index = choice.get("index", i)
                yield chunks.role(index)
                if text is None:  # tool calls: passed through uncorrected
                    skipped.append("tool_calls")
                    sentences.append(None)
                    yield chunks.tool_calls(index, choice)
                else:
                    if i == 0 and first is not None:
                        stream, delta = first
                    else:
                        stream = self.helpers.stream_correct(question, text, limits)
                        ctx.track(stream)
                        delta = await stream.first()
                    if delta:
                        if sent is not None and i == 0:
                            sent.append(delta)
                        yield chunks.text(index, delta)
                    async for delta in stream.rest():
                        if sent is not None and i == 0:
                            sent.append(delta)
                        yield chunks.text(index, delta)
                    skipped.append(stream.skipped)
                    result = stream.result
                    results.append(result)
                    sentences.append([SentenceTrace.of(r) for r in result.sentences] if result else None)
                    aligner_s = max(aligner_s, stream.waited_s)
                    stream = None
                    if result is not None and result.finish_reason is not None:
                        choice = {**choice, "finish_reason": result.finish_reason}
                yield chunks.finish(index, choice.get("finish_reason"))
            add_aligner_tokens(trace, results)
            chunks.usage = delivered_usage(chunks.usage, len(choices), results, trace)
            trace.helper_ms.aligner = round(aligner_s * 1000, 3)
            trace.aligner_skipped = skipped[0] if len(skipped) == 1 else skipped
            if self.helpers.aligner is not None and self.helpers.aligner.sentence:
                trace.sentences = sentences[0] if len(sentences) == 1 else sentences
            yield chunks.last({"aligngate": trace.as_json()} if req.trace_on else None) + DONE
        except GatewayError as exc:
            ctx.outcome = exc.code
            logger.warning("request %s: streamed correction failed: %s", ctx.request_id, exc.message)
            yield error_frame(exc) + DONE
        finally:
            if sent is not None and ctx.capture is not None:
                ctx.capture.final_answer = "".join(sent) if sent else None
            if stream is not None:  # failed or cancelled mid-correction
                await stream.aclose()


def _first_choice(value: str | list[str | None] | None) -> str | None:
    return value[0] if isinstance(value, list) else value
