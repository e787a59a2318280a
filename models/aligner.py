"""The Aligner-style response corrector: edits the backend's answer to make it more helpful and harmless.

``Aligner(engine, template="aligner-v1")`` renders ``(question, answer)`` through an aligner template (see
:mod:`models.templates`) and decodes greedily (temperature 0) on any ``Engine``.

* ``await correct(question, answer)`` → :class:`AlignResult`. The correction is the helper's output with
  surrounding whitespace and a cleanly separable leading label (``Corrected answer:``, ``Here is the corrected
  answer:``) removed. The original answer is kept, and ``skipped_reason`` says why (:meth:`Aligner.check`, the
  checks themselves in :mod:`models.guards`):

  ==================== ==================================================================================
  ``no_answer``        the answer is empty: nothing to correct, the helper is not called
  ``empty``            the helper's output is empty
  ``truncated``        it stopped at ``max_tokens`` (a cut-off correction is worse than a complete answer)
  ``template_leak``    it carries a chat-template or role marker, the aligner template's own headers
                       (``Question:``, ``Correction:``, ``##Answer_Prefix``...) or self-commentary ("This answer is
                       more helpful and harmless than...", "The corrected answer is") the answer did not have
  ``repetition``       it loops (a repeated sentence, word 5-gram or run of characters) where the answer did not
  ``language_changed`` its script, or its stop-word language, differs from the answer's
  ``dropped_content``  the answer has 20 words or more and the correction keeps under 30 % of that many words,
                       or only cuts (an extract: at most 10 % new words) and keeps under two thirds, without
                       being a refusal (a refusal of a harmful request is a legitimate short correction)
  ==================== ==================================================================================
* ``stream_correct(question, answer)`` → :class:`AlignStream`, an async iterator of correction text deltas
  as the engine produces them (for streamed responses). Leading whitespace is dropped and trailing whitespace
  held back, so the deltas concatenate to the helper's output without surrounding whitespace. If the engine
  finishes without any text, the original answer is yielded instead. Text already sent cannot be taken back, so
  the other guards cannot keep the original: a streamed correction that hits ``max_tokens`` simply ends, and one
  that leaks its template, loops, changes language or drops content is served as generated (use a sentence
  template, whose guards apply sentence by sentence, where that matters). After the iteration,
  ``AlignStream.result`` holds the :class:`AlignResult`.

Both bound the helper by ``timeout_s`` (for a stream: the whole correction) and raise ``EngineTimeout``;
engine errors propagate so that the caller applies its ``on_error`` policy.

With a sentence template (``stream``, ``stream-chat``; ``Aligner.sentence``) the unit of correction is a
sentence: ``correct_sentence(question, prefix, sentence)`` corrects one, given the answer before it as already
corrected, with the same guards but ``dropped_content`` (:data:`SENTENCE_GUARDS`: a failing correction keeps the
sentence; ``timeout_s`` bounds each sentence). A sentence may legitimately shrink to a few words, or the aligner
may merge it away, so a per-sentence length floor would mostly refuse good edits; a whole answer's shrinking is
checked on whole answers only. Growth is bounded instead: a sentence's correction may take at most
:func:`sentence_token_cap` tokens (twice the sentence's length, counted as one token per 3 UTF-8 bytes, plus
16), so an aligner that writes a whole answer where one sentence was asked for stops there (``truncated``, the
sentence kept) instead of generating up to its ``max_tokens`` while the client waits. ``correct`` and
``stream_correct`` then cut the whole answer into segments (:mod:`models.sentences`) and correct its sentences one
after the other, each with the corrected text before it as its prefix; fenced code and pieces without words pass
through as they are. ``AlignResult.sentences`` says what happened to each segment; the answer counts as corrected
when at least one sentence was (else its reason is the first sentence's guard), and an engine failure on any
sentence fails the whole correction. ``stream_correct`` yields each segment once it is done.

:func:`question_from_messages` turns a multi-turn chat into the aligner's ``question``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from models.engine import Delta, Engine, EngineTimeout, FinishReason, SamplingParams
from models.guards import dropped_content, language_changed, leaked_template, repeats, strip_correction_label
from models.limits import Budget, ClientLimits, StopScanner, cut_at_stop, estimate_tokens, share_tokens
from models.sentences import DEFAULT_MAX_CHARS, Segment, split_sentences
from models.templates import Rendered, Template, generate, get_template, stream
from models.wire.read import content_text

__all__ = [
    "SENTENCE_GUARDS",
    "AlignResult",
    "AlignSkipReason",
    "AlignStream",
    "Aligner",
    "SentenceResult",
    "question_from_messages",
    "sentence_skip",
    "sentence_token_cap",
]

AlignSkipReason = Literal[
    "no_answer", "empty", "truncated", "template_leak", "repetition", "language_changed", "dropped_content",
]
#: The guards that also apply to one sentence (``dropped_content`` does not: see the module docstring).
SENTENCE_GUARDS: frozenset[AlignSkipReason] = frozenset(
    {"empty", "truncated", "template_leak", "repetition", "language_changed"}
)


@dataclass(frozen=True, slots=True)
class SentenceResult:
    """One segment of a sentence-by-sentence correction: the ``original`` text (whitespace around it included),
    the ``served`` text that replaces it (the correction inside the original's whitespace, or the original), and
    why it was kept (``skipped``: ``None`` when corrected; see :func:`sentence_skip`)."""

    original: str
    served: str
    skipped: str | None
    elapsed_ms: float
    #: The aligner's count of the served correction's tokens (``None`` when the original was served).
    tokens: int | None = None
    #: The helper's prompt and completion tokens on this sentence, served or not.
    spent: tuple[int, int] = (0, 0)

    @property
    def corrected(self) -> bool:
        return self.skipped is None


#: A sentence's correction may take at most SENTENCE_GROWTH x the sentence's tokens + SENTENCE_TOKEN_SLACK.
SENTENCE_GROWTH = 2
SENTENCE_TOKEN_SLACK = 16


def sentence_token_cap(sentence: str) -> int:
    """The most tokens one sentence's correction may take: twice the sentence's length in tokens, estimated as one
    per 3 UTF-8 bytes (about 1.3x an English sentence's real count, one per CJK character), plus 16."""
    return SENTENCE_GROWTH * -(-len(sentence.encode("utf-8")) // 3) + SENTENCE_TOKEN_SLACK


def sentence_skip(segment: Segment) -> str | None:
    """Why a segment goes out uncorrected before any helper call: ``code`` (a fenced block), ``no_text`` (no letter
    or digit in it); ``None`` for a sentence to correct."""
    if segment.kind == "code":
        return "code"
    if segment.kind == "other":
        return "no_text"
    return None


@dataclass(frozen=True, slots=True)
class AlignResult:
    """``corrected`` is the text to show: the correction, or ``original`` when ``skipped_reason`` is set.
    ``sentences``: with a sentence template, what happened to each segment of the answer (else empty)."""

    corrected: str
    original: str
    skipped_reason: AlignSkipReason | None
    elapsed_ms: float
    sentences: tuple[SentenceResult, ...] = ()
    #: The served correction's tokens by the aligner's count (sentences: of the corrected ones); ``None`` when the
    #: original was served or the engine gave no count.
    tokens: int | None = None
    #: Why the served text ended at the client's limits: ``"length"`` (``max_tokens``), ``"stop"`` (a stop
    #: sequence); ``None`` when it did not.
    finish_reason: FinishReason | None = None
    #: What the helper spent on it, corrected or not: prompt and completion tokens of all its calls.
    helper_prompt_tokens: int = 0
    helper_completion_tokens: int = 0


class Aligner:
    """Corrects answers with an Aligner-style helper running on ``engine`` (greedy decoding)."""

    def __init__(
        self, engine: Engine, template: str = "aligner-v1", timeout_s: float = 60.0, max_tokens: int = 2048,
        max_sentence_chars: int = DEFAULT_MAX_CHARS,
    ) -> None:
        """``template``: an aligner template name (``aligner-v1``, ``aligner-v2``, ``aligner-chat``, or a sentence
        template: ``stream``, ``stream-chat``). ``max_sentence_chars``: the sentence splitter's length bound."""
        if timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        self.engine = engine
        self.template: Template = get_template(template, "aligner")
        self.timeout_s = timeout_s
        self.max_sentence_chars = max_sentence_chars
        self.sampling = SamplingParams(max_tokens=max_tokens, temperature=0.0, top_p=1.0)

    @property
    def sentence(self) -> bool:
        """Whether this aligner corrects sentence by sentence (a sentence template)."""
        return self.template.sentence

    def render(self, question: str, answer: str) -> Rendered:
        """The helper input for ``(question, answer)`` (a whole-answer template)."""
        return self.template.render({"question": question, "answer": answer})

    def render_sentence(self, question: str, prefix: str, sentence: str) -> Rendered:
        """The helper input for one sentence after ``prefix`` (a sentence template)."""
        return self.template.render({"question": question, "prefix": prefix, "last": sentence})

    async def correct(
        self, question: str, answer: str, limits: ClientLimits | None = None, *, answer_cut: bool = False
    ) -> AlignResult:
        """The corrected ``answer`` to ``question`` (see the module docstring for when the original is kept), within
        the client's ``limits``; ``answer_cut``: the backend's answer itself stopped at the client's ``max_tokens``."""
        if self.sentence:
            return await self._correct_sentences(question, answer, limits)
        start = time.perf_counter()
        if not answer.strip():
            return AlignResult(answer, answer, "no_answer", _ms_since(start))
        limits = limits or ClientLimits()
        return await self._generate(self.render(question, answer), answer, start, sentence=False,
                                    max_tokens=limits.max_tokens, stop=limits.stop,
                                    may_cut=answer_cut and self.client_bound(limits))

    def client_bound(self, limits: ClientLimits) -> bool:
        """Whether the client's ``max_tokens`` (not the aligner's own) is what bounds a correction."""
        return limits.max_tokens is not None and limits.max_tokens <= self.sampling.max_tokens

    async def correct_sentence(
        self, question: str, prefix: str, sentence: str, *, max_tokens: int | None = None
    ) -> AlignResult:
        """The corrected ``sentence`` (without the whitespace around it), given the answer before it as already
        corrected (``prefix``); a sentence template only. The same guards as :meth:`correct` but ``dropped_content``;
        the correction is bounded by :func:`sentence_token_cap`, and ``max_tokens`` lowers that (what is left of the
        client's, :class:`models.limits.Budget`)."""
        start = time.perf_counter()
        if not sentence.strip():
            return AlignResult(sentence, sentence, "no_answer", _ms_since(start))
        cap = sentence_token_cap(sentence) if max_tokens is None else min(max_tokens, sentence_token_cap(sentence))
        return await self._generate(self.render_sentence(question, prefix, sentence), sentence, start, sentence=True,
                                    max_tokens=cap)

    async def _correct_sentences(self, question: str, answer: str, limits: ClientLimits | None) -> AlignResult:
        start = time.perf_counter()
        budget = Budget(limits)
        results = [r async for r in self._each_sentence(question, answer, budget)]
        return _joined(answer, results, _ms_since(start), budget.ended)

    async def _each_sentence(
        self, question: str, answer: str, budget: Budget
    ) -> AsyncGenerator[SentenceResult, None]:
        """The answer's segments, each corrected (sentences) or passed through, in order, until ``budget`` ends the
        answer (the rest is dropped)."""
        served: list[str] = []
        for segment in split_sentences(answer, self.max_sentence_chars):
            if budget.ended is not None:
                return
            skip = sentence_skip(segment)
            if skip is not None:
                result = SentenceResult(segment.text, budget.take(segment.text, None), skip, 0.0)
            else:
                one = await self.correct_sentence(question, "".join(served).strip(), segment.body,
                                                  max_tokens=budget.cap(self.sampling.max_tokens))
                if one.skipped_reason is None:
                    text = budget.take(segment.replaced(one.corrected), one.tokens)
                    result = SentenceResult(segment.text, text, None, one.elapsed_ms, one.tokens)
                else:
                    result = SentenceResult(segment.text, budget.take(segment.text, None), one.skipped_reason,
                                            one.elapsed_ms)
                result = dataclasses.replace(result, spent=(one.helper_prompt_tokens, one.helper_completion_tokens))
            served.append(result.served)
            yield result

    def sampling_for(self, max_tokens: int | None, stop: tuple[str, ...] = ()) -> SamplingParams:
        """The aligner's sampling, its ``max_tokens`` lowered to ``max_tokens`` and stopping at ``stop``."""
        cap = self.sampling.max_tokens if max_tokens is None else min(self.sampling.max_tokens, max_tokens)
        return dataclasses.replace(self.sampling, max_tokens=cap, stop=stop)

    async def _generate(
        self, rendered: Rendered, original: str, start: float, *, sentence: bool, max_tokens: int | None = None,
        stop: tuple[str, ...] = (), may_cut: bool = False,
    ) -> AlignResult:
        """Run one correction; the guards (:meth:`check`) keep ``original`` when it fails one. The correction ends
        at the first of ``stop``; ``may_cut``: one cut off at ``max_tokens`` is served (ending in ``length``)."""
        try:
            async with asyncio.timeout(self.timeout_s):
                completion = await generate(self.engine, rendered, self.sampling_for(max_tokens, stop))
        except TimeoutError as exc:
            raise self._timed_out() from exc
        generated = strip_correction_label(completion.text.strip())
        text, stopped = cut_at_stop(generated, stop)
        text = text.rstrip()
        tokens = completion.completion_tokens
        if stopped:
            tokens = share_tokens(tokens, text, generated)
        finish: FinishReason | None = "stop" if stopped else None
        if not stopped and completion.finish_reason == "length" and may_cut:
            finish = "length"
        reason = self.check(original, text, "stop" if stopped or finish else completion.finish_reason,
                            sentence=sentence)
        spent = (completion.prompt_tokens, completion.completion_tokens)
        if reason is not None:
            return AlignResult(original, original, reason, _ms_since(start), helper_prompt_tokens=spent[0],
                               helper_completion_tokens=spent[1])
        return AlignResult(text, original, None, _ms_since(start), tokens=tokens, finish_reason=finish,
                           helper_prompt_tokens=spent[0], helper_completion_tokens=spent[1])

    @staticmethod
    def check(
        original: str, correction: str, finish_reason: FinishReason = "stop", *, sentence: bool = False
    ) -> AlignSkipReason | None:
        """Why a cleaned ``correction`` of ``original`` (a whole answer, or one ``sentence``) must not be served, or
        ``None`` when it passes every guard (see the module docstring)."""
        if not correction:
            return "empty"
        if finish_reason == "length":
            return "truncated"
        if leaked_template(original, correction):
            return "template_leak"
        if repeats(original, correction):
            return "repetition"
        if language_changed(original, correction):
            return "language_changed"
        if not sentence and dropped_content(original, correction):
            return "dropped_content"
        return None

    def stream_correct(self, question: str, answer: str, limits: ClientLimits | None = None) -> AlignStream:
        """Correction text deltas as the engine streams them, within the client's ``limits`` (the aligner's own
        generation capped at its ``max_tokens``, cut at its ``stop`` sequences); the original answer if the engine
        gives none."""
        return AlignStream(self, question, answer, limits)

    def _timed_out(self) -> EngineTimeout:
        return EngineTimeout(f"aligner (engine {self.engine.name!r}) did not answer within {self.timeout_s:g}s")


class AlignStream(AsyncIterator[str]):
    """The streamed correction of one answer: iterate for text deltas; ``result`` is set once it has ended."""

    def __init__(self, aligner: Aligner, question: str, answer: str, limits: ClientLimits | None = None) -> None:
        self.result: AlignResult | None = None
        self._aligner = aligner
        self._question = question
        self._answer = answer
        self._limits = limits or ClientLimits()
        self._gen = self._run()

    def __aiter__(self) -> AlignStream:
        return self

    async def __anext__(self) -> str:
        return await self._gen.__anext__()

    async def aclose(self) -> None:
        """Stop early: abandons the engine stream (which cancels the generation)."""
        await self._gen.aclose()

    async def _run(self) -> AsyncGenerator[str, None]:
        aligner, answer = self._aligner, self._answer
        start = time.perf_counter()
        if aligner.sentence:
            results: list[SentenceResult] = []
            budget = Budget(self._limits)
            async for result in aligner._each_sentence(self._question, answer, budget):
                results.append(result)
                if result.served:
                    yield result.served
            self.result = _joined(answer, results, _ms_since(start), budget.ended)
            return
        if not answer.strip():
            self.result = AlignResult(answer, answer, "no_answer", _ms_since(start))
            if answer:
                yield answer
            return
        limits = self._limits
        rendered = aligner.render(self._question, answer)
        deltas = stream(aligner.engine, rendered, aligner.sampling_for(limits.max_tokens, limits.stop))
        deadline = asyncio.get_running_loop().time() + aligner.timeout_s
        scanner = StopScanner(limits.stop)
        sent: list[str] = []
        pending = ""  # trailing whitespace held back until more text follows it
        last: Delta | None = None
        try:
            while not scanner.stopped:
                try:
                    # the deadline covers waits on the engine only, never the consumer's own work
                    async with asyncio.timeout_at(deadline):
                        delta = await anext(deltas)
                except StopAsyncIteration:
                    break
                except TimeoutError as exc:
                    raise aligner._timed_out() from exc
                if delta.index != 0:
                    continue
                if delta.finish_reason is not None or delta.completion_tokens is not None:
                    last = delta
                piece = scanner.feed(delta.text)
                text = piece if sent else piece.lstrip()
                body = (pending + text).rstrip()
                pending = (pending + text)[len(body) :]
                if body:
                    sent.append(body)
                    yield body
            tail = scanner.finish().rstrip()
            if tail:
                text = pending + tail if sent else tail.lstrip()
                sent.append(text)
                yield text
        finally:
            closer = getattr(deltas, "aclose", None)
            if closer is not None:
                await closer()
        prompt_tokens = last.prompt_tokens if last is not None and last.prompt_tokens is not None else 0
        counted = last.completion_tokens if last is not None else None
        if not sent:
            self.result = AlignResult(answer, answer, "empty", _ms_since(start), helper_prompt_tokens=prompt_tokens,
                                      helper_completion_tokens=counted or 0)
            yield answer
            return
        served = "".join(sent)
        tokens = estimate_tokens(served) if scanner.stopped or counted is None else counted
        finish: FinishReason | None = "stop" if scanner.stopped else None
        if finish is None and last is not None and last.finish_reason == "length":
            finish = "length"
        self.result = AlignResult(served, answer, None, _ms_since(start), tokens=tokens, finish_reason=finish,
                                  helper_prompt_tokens=prompt_tokens,
                                  helper_completion_tokens=counted if counted is not None else tokens)


def _ms_since(start: float) -> float:
    return (time.perf_counter() - start) * 1000.0


def _joined(
    answer: str, results: list[SentenceResult], elapsed_ms: float, ended: FinishReason | None = None
) -> AlignResult:
    """The result of a sentence-by-sentence correction: corrected when at least one sentence was; the served text
    also when the client's limits ended it early (``ended``)."""
    sentences = tuple(results)
    spent = (sum(r.spent[0] for r in results), sum(r.spent[1] for r in results))
    served = "".join(r.served for r in results)
    if any(r.corrected for r in results):
        tokens = sum(r.tokens or 0 for r in results if r.corrected)
        return AlignResult(served, answer, None, elapsed_ms, sentences, tokens, ended, *spent)
    tried = [r.skipped for r in results if r.skipped in SENTENCE_GUARDS]
    reason: AlignSkipReason = next((g for g in SENTENCE_GUARDS if tried and g == tried[0]), "no_answer")
    return AlignResult(served if ended else answer, answer, reason, elapsed_ms, sentences, None, ended, *spent)


_ROLE_LABELS = {"system": "System", "developer": "System", "user": "User", "assistant": "Assistant", "tool": "Tool"}


def question_from_messages(
    messages: Sequence[Mapping[str, Any]], *, max_context_turns: int = 6, max_turn_chars: int = 300
) -> str:
    """The aligner's ``question`` for a chat request.

    With a single user turn (system messages aside, which are then left out) the question is that message's
    text, verbatim, exactly as the Aligner checkpoints were trained. With earlier turns it is a compact
    transcript, one line per earlier turn and the last user message last, verbatim::

        System: You are a pirate.
        User: hi
        Assistant: Arr, hello!
        User: <the last user message, verbatim, newlines kept>

    Earlier turns are ``Role: text`` lines (``System``, ``User``, ``Assistant``, ``Tool``; other roles
    capitalised) with runs of whitespace collapsed to one space, each cut to ``max_turn_chars`` characters
    (ending in ``…``); only the last ``max_context_turns`` of them are kept, and turns without text (an
    assistant turn that only called tools) are skipped. Turns after the last user message are left out.
    Text is taken from string contents and the text parts of content lists. Without any user message the
    result is the transcript of all turns.
    """
    turns = [(str(m.get("role", "")), content_text(m.get("content"))) for m in messages]
    last_user = next((i for i in range(len(turns) - 1, -1, -1) if turns[i][0] == "user"), None)
    earlier = turns if last_user is None else turns[:last_user]
    lines = [_context_line(role, text, max_turn_chars) for role, text in earlier if text.strip()]
    if last_user is None:
        return "\n".join(lines[-max_context_turns:] if max_context_turns > 0 else [])
    question = turns[last_user][1]
    if not any(role not in ("system", "developer") for role, text in earlier if text.strip()):
        return question
    context = lines[-max_context_turns:] if max_context_turns > 0 else []
    return "\n".join([*context, f"User: {question}"])


def _context_line(role: str, text: str, max_chars: int) -> str:
    label = _ROLE_LABELS.get(role, role.capitalize() or "Unknown")
    flat = " ".join(text.split())
    if len(flat) > max_chars:
        flat = flat[: max(max_chars - 1, 0)].rstrip() + "…"
    return f"{label}: {flat}"
