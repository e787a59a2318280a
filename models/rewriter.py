"""The BPO-style prompt rewriter: improves the last user message of a chat request before the backend sees it.

``Rewriter(engine, template="bpo")`` renders the user's text through a rewriter template (see
:mod:`models.templates`) and runs it on any ``Engine`` with BPO's published sampling (temperature 0.6, top_p
0.9). Only the **last user message** is rewritten: its string content, or the text parts of a content list
(the rewrite takes the place of the first text part, the other text parts are dropped, images and other parts
stay where they were). The input list is never mutated.

Guards keep the original message and say why in ``RewriteResult.skipped_reason``:

====================== ==================================================================================
``no_user_message``    the request has no user message
``no_text``            the last user message has no text (empty, or only images)
``prompt_too_long``    the user text has more than ``max_prompt_words`` words (the helper is not called)
``empty``              the helper's output is empty once cleaned
``truncated``          the helper stopped at its token budget (a cut-off prompt would mislead the backend)
``too_long_output``    the rewrite has more than ``max_ratio`` (6) times the original's words
``too_short_output``   the rewrite has fewer than ``min_ratio`` (0.5) times the original's words
``template_leak``      the rewrite carries chat-template or role markers (``<|im_start|>``, ``[INST]``, ``USER:``, ...)
                       or echoes the BPO instruction it was given ("Please help me improve this prompt...")
``answered``           the rewrite answers instead of asking: it starts like an answer (``Sure``, ``Yes,``, ``Here
                       is``, ...), or the user asked a question (``?``) and the rewrite neither asks one nor
                       starts with a request (``Explain``, ``Please``, ``How``, ``Can you``, ...)
``dropped_constraint`` the rewrite lost what the user fixed: a number, quoted text, code, a URL, a capitalised
                       multi-word name, a requested length or format (:func:`models.guards.missing_constraints`
                       says exactly what counts; ``five`` for ``5`` passes)
====================== ==================================================================================

Output cleaning (:func:`clean_rewrite`) removes surrounding whitespace, a leading label such as
``Optimized prompt:`` / ``Improved prompt:``, and quotes around the whole text.

The helper may generate at most ``token_budget(original)`` tokens: the configured ``max_tokens``, capped at
what a rewrite within ``max_ratio`` could need (a small model that rambles is stopped early).

Successful rewrites are cached (LRU, ``cache_size`` entries, ``cache_ttl_s`` seconds, keyed by template and
original text); a hit sets ``RewriteResult.cached``. Concurrent calls for the same text share one helper call
(single flight; the joiners get ``shared=True``). The helper call is bounded by ``timeout_s``
(``EngineTimeout``); engine errors propagate, so the caller applies its ``on_error`` policy.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from models.engine import Engine, EngineTimeout, FinishReason, SamplingParams
from models.guards import TEMPLATE_MARKERS, missing_constraints
from models.templates import Template, generate, get_template
from models.wire.read import content_text

__all__ = ["BPO_SAMPLING", "RewriteResult", "Rewriter", "SkipReason", "clean_rewrite"]

SkipReason = Literal[
    "no_user_message", "no_text", "prompt_too_long", "empty", "truncated", "too_long_output", "too_short_output",
    "template_leak", "answered", "dropped_constraint",
]

#: The BPO templates' own instruction, echoed into a rewrite instead of (or around) the rewritten prompt.
_INSTRUCTION_ECHO = re.compile(
    r"improve this prompt|more helpful and harmless response|you are an expert prompt engineer", re.IGNORECASE
)
#: The opening of an answer, not of a prompt.
_ANSWER_START = re.compile(
    r"^(?:sure|certainly|of course|yes|no|here(?:'s| is| are)|the answer|as an ai|i'm sorry|i am sorry|absolutely)\b",
    re.IGNORECASE,
)
#: The opening of a request: an instruction, a question word, or a polite request.
_REQUEST_START = re.compile(
    r"^(?:please|kindly|explain|describe|tell|write|list|give|provide|create|generate|summari[sz]e|compare|outline|"
    r"show|help|suggest|recommend|name|identify|define|discuss|analy[sz]e|calculate|find|translate|classify|"
    r"rewrite|draft|compose|plan|design|make|imagine|act|pretend|consider|answer|respond|offer|share|detail|"
    r"elaborate|clarify|assist|guide|walk|teach|can|could|would|will|should|is|are|do|does|did|what|why|how|when|"
    r"where|which|who|whom|whose|i (?:want|need|would like|am looking|'d like)|i'd like|you are|as an? |let's|"
    r"in |using |for |given |based )",
    re.IGNORECASE,
)

#: BPO's published sampling (top_p 0.9, temperature 0.6); rewrites of long prompts need room to grow.
BPO_SAMPLING = SamplingParams(max_tokens=1024, temperature=0.6, top_p=0.9)

Message = Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class RewriteResult:
    """What ``Rewriter.rewrite`` did.

    ``messages`` is the request's message list with the last user message rewritten (the input objects
    themselves when skipped); ``original`` is that message's text (``None`` without a user message);
    ``rewritten`` the accepted rewrite or ``None``; ``skipped_reason`` why not (``None`` when rewritten).
    """

    messages: list[dict[str, Any]]
    original: str | None
    rewritten: str | None
    skipped_reason: SkipReason | None
    elapsed_ms: float
    #: The rewrite came from the cache (no helper call).
    cached: bool = False
    #: The rewrite came from an identical request's helper call that was already in flight.
    shared: bool = False
    #: The prompt and completion tokens of the helper call this request made (0 when cached, shared or not called).
    helper_prompt_tokens: int = 0
    helper_completion_tokens: int = 0


# ---------------------------------------------------------------------------------------------- cleaning

_LABEL = re.compile(
    r"^(?:\*\*|__)?\s*(?:here\s+is\s+(?:the|an|my|your)\s+)?"
    r"(?:optimi[sz]ed|improved|rewritten|refined|revised|enhanced|better)\s+prompt\s*"
    r"(?:\*\*|__)?\s*[:\uff1a]\s*(?:\*\*|__)?",
    re.IGNORECASE,
)
_QUOTES = (('"', '"'), ("'", "'"), ("“", "”"), ("\u2018", "\u2019"), ("«", "»"), ("`", "`"))


def _unquote(text: str) -> str:
    for left, right in _QUOTES:
        if len(text) >= 2 and text.startswith(left) and text.endswith(right):
            inner = text[len(left) : -len(right)]
            if left not in inner and right not in inner:  # '"a" or "b"' is not one quoted text
                return inner
    return text


def clean_rewrite(text: str) -> str:
    """The rewrite without surrounding whitespace, a leading ``Optimized prompt:``-style label, or quotes
    around the whole text."""
    for _ in range(3):
        before = text
        text = _LABEL.sub("", text.strip(), count=1).strip()
        text = _unquote(text).strip()
        if text == before:
            break
    return text


def _word_count(text: str) -> int:
    return len(text.split())


# ---------------------------------------------------------------------------------------------- cache


class _TTLCache:
    """A least-recently-used map whose entries also expire ``ttl_s`` seconds after they were stored.

    Plain synchronous code: safe under asyncio, which never switches tasks inside these methods.
    """

    def __init__(self, size: int, ttl_s: float, clock: Callable[[], float]) -> None:
        self.size = size
        self.ttl_s = ttl_s
        self._clock = clock
        self._items: OrderedDict[tuple[str, str], tuple[float, str]] = OrderedDict()

    def get(self, key: tuple[str, str]) -> str | None:
        item = self._items.get(key)
        if item is None:
            return None
        expires, value = item
        if self._clock() >= expires:
            del self._items[key]
            return None
        self._items.move_to_end(key)
        return value

    def put(self, key: tuple[str, str], value: str) -> None:
        if self.size <= 0:
            return
        self._items[key] = (self._clock() + self.ttl_s, value)
        self._items.move_to_end(key)
        while len(self._items) > self.size:
            self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)

    def clear(self) -> None:
        self._items.clear()


#: One helper call's outcome: the accepted rewrite or why not, and its prompt and completion tokens.
_Generated = tuple[str | None, SkipReason | None, tuple[int, int]]


@dataclass(slots=True)
class _Flight:
    task: asyncio.Task[_Generated]
    waiters: int = 0


# ---------------------------------------------------------------------------------------------- rewriter


class Rewriter:
    """Rewrites the last user message of a chat request with a BPO-style helper running on ``engine``."""

    def __init__(
        self,
        engine: Engine,
        template: str = "bpo",
        timeout_s: float = 30.0,
        max_prompt_words: int = 512,
        cache_size: int = 1024,
        cache_ttl_s: float = 600.0,
        sampling: SamplingParams = BPO_SAMPLING,
        *,
        max_ratio: float = 6.0,
        min_ratio: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``template``: a rewriter template name (``bpo`` or ``bpo-chat``); ``clock`` drives cache expiry."""
        if timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        self.engine = engine
        self.template: Template = get_template(template, "rewriter")
        self.timeout_s = timeout_s
        self.max_prompt_words = max_prompt_words
        self.sampling = sampling
        self.max_ratio = max_ratio
        self.min_ratio = min_ratio
        self.cache = _TTLCache(cache_size, cache_ttl_s, clock)
        self._inflight: dict[tuple[str, str], _Flight] = {}

    async def rewrite(self, messages: Sequence[Message]) -> RewriteResult:
        """Rewrite the last user message of ``messages`` (OpenAI chat format); see the module docstring."""
        start = time.perf_counter()
        given = [m if isinstance(m, dict) else dict(m) for m in messages]
        index = next((i for i in range(len(given) - 1, -1, -1) if given[i].get("role") == "user"), None)
        if index is None:
            return _skip(given, None, "no_user_message", start)
        original = content_text(given[index].get("content"))
        if not original.strip():
            return _skip(given, original, "no_text", start)
        if _word_count(original) > self.max_prompt_words:
            return _skip(given, original, "prompt_too_long", start)

        key = (self.template.name, original)
        cached = self.cache.get(key)
        shared = False
        spent = (0, 0)
        if cached is not None:
            rewritten: str | None = cached
            reason: SkipReason | None = None
        else:
            (rewritten, reason, spent), shared = await self._single_flight(key, original)
            if shared:
                spent = (0, 0)  # counted once, on the request that made the call
        if rewritten is None:
            return dataclasses.replace(_skip(given, original, reason, start), helper_prompt_tokens=spent[0],
                                       helper_completion_tokens=spent[1])
        out = list(given)
        out[index] = _with_text(given[index], rewritten)
        return RewriteResult(
            out, original, rewritten, None, _ms_since(start), cached=cached is not None, shared=shared,
            helper_prompt_tokens=spent[0], helper_completion_tokens=spent[1],
        )

    async def _single_flight(
        self, key: tuple[str, str], original: str
    ) -> tuple[_Generated, bool]:
        """The outcome of the helper call for ``key``: a new call, or the one already in flight (shared)."""
        flight = self._inflight.get(key)
        shared = flight is not None
        if flight is None:
            task = asyncio.create_task(self._generate(key, original), name=f"rewrite:{self.template.name}")
            flight = self._inflight[key] = _Flight(task)

            def _forget(_: object, key: tuple[str, str] = key, flight: _Flight = flight) -> None:
                if self._inflight.get(key) is flight:
                    del self._inflight[key]

            task.add_done_callback(_forget)
        flight.waiters += 1
        try:
            # shield: one caller going away (client disconnect) must not cancel the others' call
            return await asyncio.shield(flight.task), shared
        except asyncio.CancelledError:
            if flight.waiters == 1 and not flight.task.done():
                flight.task.cancel()  # nobody else is waiting for it
            raise
        finally:
            flight.waiters -= 1

    def token_budget(self, original: str) -> int:
        """Most tokens worth generating for ``original``: a rewrite past ``max_ratio`` times its words would be
        refused anyway (about 2 tokens a word, with room for short prompts), so the helper stops there."""
        return min(self.sampling.max_tokens, math.ceil(self.max_ratio * _word_count(original) * 2) + 16)

    async def _generate(self, key: tuple[str, str], original: str) -> _Generated:
        rendered = self.template.render({"prompt": original})
        sampling = dataclasses.replace(self.sampling, max_tokens=self.token_budget(original))
        try:
            async with asyncio.timeout(self.timeout_s):
                completion = await generate(self.engine, rendered, sampling)
        except TimeoutError as exc:
            raise EngineTimeout(
                f"rewriter (engine {self.engine.name!r}) did not answer within {self.timeout_s:g}s"
            ) from exc
        text = clean_rewrite(completion.text)
        reason = self.check(original, text, completion.finish_reason)
        spent = (completion.prompt_tokens, completion.completion_tokens)
        if reason is not None:
            return None, reason, spent
        self.cache.put(key, text)
        return text, None, spent

    def check(self, original: str, rewritten: str, finish_reason: FinishReason = "stop") -> SkipReason | None:
        """Why a cleaned rewrite of ``original`` must not be used, or ``None`` when it passes every guard."""
        if not rewritten:
            return "empty"
        if finish_reason == "length":
            return "truncated"
        before, after = _word_count(original), _word_count(rewritten)
        if after > self.max_ratio * before:
            return "too_long_output"
        if after < self.min_ratio * before:
            return "too_short_output"
        if TEMPLATE_MARKERS.search(rewritten) or (
            _INSTRUCTION_ECHO.search(rewritten) and not _INSTRUCTION_ECHO.search(original)
        ):
            return "template_leak"
        if _ANSWER_START.match(rewritten) or (
            "?" in original and "?" not in rewritten and not _REQUEST_START.match(rewritten)
        ):
            return "answered"
        if missing_constraints(original, rewritten):
            return "dropped_constraint"
        return None


def _ms_since(start: float) -> float:
    return (time.perf_counter() - start) * 1000.0


def _skip(
    messages: list[dict[str, Any]], original: str | None, reason: SkipReason | None, start: float
) -> RewriteResult:
    return RewriteResult(messages, original, None, reason, _ms_since(start))


def _with_text(message: dict[str, Any], text: str) -> dict[str, Any]:
    """A copy of ``message`` whose text is ``text`` (non-text content parts kept in place)."""
    content = message.get("content")
    if not isinstance(content, list):
        return {**message, "content": text}
    parts: list[Any] = []
    placed = False
    for part in content:
        if isinstance(part, dict) and part.get("type") == "text":
            if not placed:
                parts.append({**part, "text": text})
                placed = True
            continue
        parts.append(part)
    return {**message, "content": parts}
