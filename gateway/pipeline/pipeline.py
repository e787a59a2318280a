"""The alignment pipeline for one request: rewrite → backend → align, then the response (whole or streamed).

The steps, in order, each run only when the arm asks for it:

1. **rewrite** the last user message (chat) or the prompt (completions, a single string) with the rewriter;
2. **backend**: the (possibly rewritten) request goes to the backend — streamed straight through when no
   correction follows, else fetched whole;
3. **align** every text choice of the answer (tool-call choices pass through uncorrected); for a streamed
   request the correction itself is streamed as the aligner generates it;
4. **trace**: with ``X-Aligngate-Trace: 1`` the ``aligngate`` trace object is added to the response (the
   last chunk of a stream).

The control arm without a trace never gets here: the inference service relays it byte for byte.
Bodies are parsed and re-serialised with the standard library's codec, which keeps every value exact
(integers of any size included).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from starlette.responses import Response, StreamingResponse

from gateway.context import RequestContext
from gateway.errors import GatewayError, error_frame
from gateway.inference.relay import SSE_HEADERS, relay_result, relay_stream
from gateway.pipeline.arms import Arm
from gateway.pipeline.helpers import CorrectionStream, Helpers
from gateway.pipeline.trace import Trace
from gateway.upstream.protocol import Backend, UpstreamResult
from models.aligner import question_from_messages
from models.wire.chunks import ChunkWriter
from models.wire.read import choice_text, set_choice_text, usage_counts
from models.wire.sse import DONE, encode_event

logger = logging.getLogger(__name__)


def _dumps(data: Any) -> bytes:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()


@dataclass(slots=True)
class PipelineRequest:
    """One request entering the pipeline."""

    ctx: RequestContext
    backend: Backend
    path: str  # "/chat/completions" or "/completions"
    data: dict[str, Any]  # the parsed request body (mutable copy)
    arm: Arm
    trace_on: bool

    @property
    def chat(self) -> bool:
        return self.path == "/chat/completions"


class Pipeline:
    def __init__(self, helpers: Helpers) -> None:
        self.helpers = helpers

    async def run(self, req: PipelineRequest) -> Response:
        ctx, data = req.ctx, req.data
        trace = Trace(request_id=ctx.request_id, arm=req.arm)
        capture = ctx.capture
        if capture is not None:
            capture.trace = trace
        question = await self._rewrite_step(req, trace)
        if req.backend.upstream_model is not None:
            data["model"] = req.backend.upstream_model
        stream = bool(data.get("stream"))
        if req.arm not in ("align", "rewrite+align"):
            return await self._backend_only(req, trace, stream)
        include_usage = bool((data.get("stream_options") or {}).get("include_usage"))
        if stream:
            data["stream"] = False
            data.pop("stream_options", None)
        result = await self._fetch(req, _dumps(data))
        if result.status != 200:
            return relay_result(result)
        try:
            answer = json.loads(result.body)
        except ValueError:
            return relay_result(result)
        if capture is not None:
            capture.prompt_tokens, capture.completion_tokens = usage_counts(answer)
        if stream:
            return await self._stream_corrected(req, trace, question, answer, include_usage)
        await self._align_all(req, trace, question, answer)
        if capture is not None:
            capture.raw_answer = _first_choice(trace.original_content)
            choices = answer.get("choices") or []
            capture.final_answer = choice_text(choices[0], req.chat) if choices else None
        if req.trace_on:
            answer["aligngate"] = trace.as_json()
        return Response(_dumps(answer), media_type="application/json")

    # ------------------------------------------------------------------ step 1: rewrite

    async def _rewrite_step(self, req: PipelineRequest, trace: Trace) -> str:
        """Rewrite when the arm says so; returns the aligner's question (always from the user's own words)."""
        data = req.data
        if req.chat:
            messages = data.get("messages") or []
            question = question_from_messages(messages)
        else:
            prompt = data.get("prompt")
            question = prompt if isinstance(prompt, str) else ""
        if req.arm not in ("rewrite", "rewrite+align"):
            return question
        if not req.chat and not isinstance(data.get("prompt"), str):
            # a list of prompts or token ids: nothing the rewriter can read
            trace.rewriter_skipped = "unsupported_prompt"
            return question
        t = time.perf_counter()
        try:  # helper time, failures (on_error=fail) included, is not the gateway's overhead
            if req.chat:
                outcome = await self.helpers.rewrite(data["messages"])
                data["messages"] = outcome.messages
            else:
                outcome = await self.helpers.rewrite([{"role": "user", "content": data["prompt"]}])
                if outcome.rewritten is not None:
                    data["prompt"] = outcome.rewritten
        finally:
            req.ctx.upstream_s += time.perf_counter() - t
        trace.helper_ms.rewriter = round(outcome.elapsed_s * 1000, 3)
        trace.rewritten_prompt = outcome.rewritten
        trace.rewriter_skipped = outcome.skipped
        return question

    # ------------------------------------------------------------------ step 2: backend

    async def _fetch(self, req: PipelineRequest, body: bytes) -> UpstreamResult:
        t = time.perf_counter()
        try:
            result = await req.backend.fetch(req.path, body)
        finally:
            req.ctx.upstream_s += time.perf_counter() - t
        req.ctx.replica = result.replica
        return result

    async def _backend_only(self, req: PipelineRequest, trace: Trace, stream: bool) -> Response:
        body = _dumps(req.data)
        if not stream:
            result = await self._fetch(req, body)
            if req.ctx.capture is not None:
                req.ctx.capture.response_body = result.body
            if not req.trace_on or result.status != 200:
                return relay_result(result)
            try:
                answer = json.loads(result.body)
            except ValueError:
                return relay_result(result)
            answer["aligngate"] = trace.as_json()
            return Response(_dumps(answer), media_type="application/json")
        t = time.perf_counter()
        try:
            opened = await req.backend.open_stream(req.path, body)
        finally:
            req.ctx.upstream_s += time.perf_counter() - t
        if isinstance(opened, UpstreamResult):
            req.ctx.replica = opened.replica
            return relay_result(opened)
        req.ctx.replica = opened.replica_index
        tail = self._trace_chunk(req, trace) if req.trace_on else None
        return StreamingResponse(relay_stream(req.ctx, opened, tail), media_type="text/event-stream",
                                 headers=SSE_HEADERS)

    def _trace_chunk(self, req: PipelineRequest, trace: Trace) -> bytes:
        obj = "chat.completion.chunk" if req.chat else "text_completion"
        return encode_event({"object": obj, "model": req.data.get("model"), "choices": [],
                             "aligngate": trace.as_json()})

    # ------------------------------------------------------------------ step 3: align

    async def _align_all(self, req: PipelineRequest, trace: Trace, question: str, answer: dict[str, Any]) -> None:
        choices = answer.get("choices") or []
        slots = [choice_text(c, req.chat) for c in choices]
        tasks = [asyncio.ensure_future(self.helpers.correct(question, text)) for text in slots if text is not None]
        t = time.perf_counter()
        try:
            outcomes = await asyncio.gather(*tasks)
        except BaseException:
            for task in tasks:  # one failed (on_error=fail): the other corrections are not wanted any more
                task.cancel()
            raise
        finally:
            req.ctx.upstream_s += time.perf_counter() - t
        it = iter(outcomes)
        originals: list[str | None] = []
        skipped: list[str | None] = []
        for choice, text in zip(choices, slots, strict=True):
            if text is None:
                originals.append(None)
                skipped.append("tool_calls")
                continue
            outcome = next(it)
            originals.append(text)
            skipped.append(outcome.skipped)
            if outcome.corrected:
                set_choice_text(choice, req.chat, outcome.text)
        trace.helper_ms.aligner = round(max((o.elapsed_s for o in outcomes), default=0.0) * 1000, 3)
        trace.original_content = originals[0] if len(originals) == 1 else originals
        trace.aligner_skipped = skipped[0] if len(skipped) == 1 else skipped

    async def _stream_corrected(
        self, req: PipelineRequest, trace: Trace, question: str, answer: dict[str, Any], include_usage: bool
    ) -> Response:
        """Stream the correction of a whole backend answer, choice after choice."""
        choices = answer.get("choices") or []
        texts = [choice_text(c, req.chat) for c in choices]
        trace.original_content = texts[0] if len(texts) == 1 else texts
        if req.ctx.capture is not None:
            req.ctx.capture.raw_answer = texts[0] if texts else None
        first_stream: CorrectionStream | None = None
        first_delta = ""
        first_waited = 0.0
        if texts and texts[0] is not None:
            # Wait for the first corrected text before answering, so that on_error=fail can still be a 502.
            first_stream = self.helpers.stream_correct(question, texts[0])
            try:
                first_delta = await first_stream.first()
            except BaseException:
                req.ctx.upstream_s += first_stream.waited_s
                await first_stream.aclose()
                raise
            first_waited = first_stream.waited_s
            req.ctx.upstream_s += first_waited
        chunks = ChunkWriter.for_answer(answer, req.chat, include_usage)
        first = (first_stream, first_delta, first_waited)
        return StreamingResponse(
            self._correction_events(req, trace, question, choices, texts, chunks, first),
            media_type="text/event-stream", headers=SSE_HEADERS,
        )

    async def _correction_events(
        self,
        req: PipelineRequest,
        trace: Trace,
        question: str,
        choices: list[dict[str, Any]],
        texts: list[str | None],
        chunks: ChunkWriter,
        first: tuple[CorrectionStream | None, str, float],
    ) -> AsyncIterator[bytes]:
        """The stream's events; ``first`` is choice 0's correction stream, its first delta, and the time already
        counted as waiting for it."""
        ctx = req.ctx
        first_stream, first_delta, first_waited = first
        skipped: list[str | None] = []
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
                    yield chunks.tool_calls(index, choice)
                else:
                    if i == 0 and first_stream is not None:
                        stream, delta = first_stream, first_delta
                    else:
                        stream = self.helpers.stream_correct(question, text)
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
                    aligner_s = max(aligner_s, stream.waited_s)
                    ctx.upstream_s += stream.waited_s - (first_waited if stream is first_stream else 0.0)
                    stream = None
                yield chunks.finish(index, choice.get("finish_reason"))
            trace.helper_ms.aligner = round(aligner_s * 1000, 3)
            trace.aligner_skipped = skipped[0] if len(skipped) == 1 else skipped
            yield chunks.last({"aligngate": trace.as_json()} if req.trace_on else None) + DONE
        except GatewayError as exc:
            ctx.outcome = exc.code
            logger.warning("request %s: streamed correction failed: %s", ctx.request_id, exc.message)
            yield error_frame(exc) + DONE
        except asyncio.CancelledError:
            ctx.outcome = "client_disconnected"
            raise
        finally:
            if sent is not None and ctx.capture is not None:
                ctx.capture.final_answer = "".join(sent) if sent else None
            if stream is not None:  # failed or cancelled mid-correction: its wait still is helper time
                ctx.upstream_s += stream.waited_s - (first_waited if stream is first_stream else 0.0)
                await stream.aclose()


def _first_choice(value: str | list[str | None] | None) -> str | None:
    return value[0] if isinstance(value, list) else value
