"""BPO-style construction of rewriter pairs by a teacher LLM behind any OpenAI-compatible chat endpoint.

For each row (a BPO row ``{prompt, good_res, bad_res}`` or a preference pair ``{prompt, chosen, rejected}``),
the teacher is shown the original instruction with a good and a bad response, asked to analyse why the good
one is better, and to write an optimized prompt between the markers ``[Optimized Prompt]`` and ``[End]``
(:data:`TEACHER_INSTRUCTION` is the exact text). The optimized prompt is kept only if it passes BPO's word-ratio
filter (:func:`~train.data.builders.bpo_word_ratio_ok`).

For a multi-turn preference prompt, the instruction is the last user message and the turns before it are shown
to the teacher as context (:data:`TEACHER_CONTEXT_BLOCK`); the pair's ``prompt`` is that last user message.

HTTP: ``POST {base_url}/chat/completions`` (``base_url`` as the OpenAI SDK takes it, e.g.
``http://host:8000/v1``) with httpx, explicit timeouts, at most ``concurrency`` requests in flight; 429, 5xx,
timeouts and connection errors are retried ``retries`` times (2 by default) with exponential backoff (a
``Retry-After`` header is honoured, up to 30 s). Low-rate tooling, so httpx rather than the gateway's aiohttp.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from train.data.builders import bpo_word_ratio_ok
from train.data.formats import Message, RewriterPair, completion_text, render_conversation

__all__ = [
    "DROP_HTTP",
    "DROP_PARSE",
    "DROP_RATIO",
    "OPTIMIZED_END",
    "OPTIMIZED_START",
    "TEACHER_CONTEXT_BLOCK",
    "TEACHER_INSTRUCTION",
    "TeacherItem",
    "TeacherStats",
    "construct_bpo_pairs",
    "parse_optimized_prompt",
    "teacher_items",
    "teacher_messages",
]

logger = logging.getLogger(__name__)

OPTIMIZED_START = "[Optimized Prompt]"
OPTIMIZED_END = "[End]"

# The teacher's whole instruction, sent as one user message. Placeholders: {context_block} (empty, or
# TEACHER_CONTEXT_BLOCK filled in), {instruction}, {good}, {bad}. BPO-style: compare, then optimise the prompt.
TEACHER_INSTRUCTION = """You are an expert prompt engineer. Below are an instruction a user gave to an AI assistant, \
a good response to it and a bad response to it.{context_block}

[Original Instruction]
{instruction}

[Good Response]
{good}

[Bad Response]
{bad}

First compare the two responses: explain why the good response is better than the bad one, looking at \
correctness (does it follow the instruction and is it accurate; this matters most), helpfulness (depth, clarity, \
coherence, creativity) and harmlessness.

Then act as an expert prompt engineer and rewrite the original instruction into an optimized prompt that would \
lead an assistant to answer like the good response rather than the bad one. Rules:
1. Keep all the information and the intent of the original instruction; never drop any of it.
2. If the instruction raises safety concerns, rewrite it to be completely harmless on the same topic.
3. Do not add detailed constraints taken from the good response that the instruction does not imply, except as \
brief examples.
4. Keep quoted text, code and data from the instruction unchanged.
5. Do not answer the instruction yourself.

Write your comparison first, then the optimized prompt alone between the two markers, exactly in this format:
[Comparison]
(your comparison)
[Optimized Prompt]
(the optimized prompt)
[End]"""

# Inserted at {context_block} when the instruction is the last turn of a longer conversation.
TEACHER_CONTEXT_BLOCK = """ The instruction is the last user turn of the conversation below, which you must not \
rewrite.

[Conversation So Far]
{conversation}"""

DROP_PARSE = "parse_failure"
DROP_RATIO = "ratio"
DROP_HTTP = "http_error"

_MAX_RETRY_AFTER_S = 30.0
_MAX_ERRORS_KEPT = 20


@dataclass(frozen=True)
class TeacherItem:
    """What the teacher is asked about: an instruction (with earlier turns, if any) and a good and a bad answer."""

    instruction: str
    good: str
    bad: str
    context: tuple[Message, ...] = ()


@dataclass
class TeacherStats:
    """Outcome of a construction run: rows asked, pairs kept, and drops by reason."""

    asked: int = 0
    kept: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    retries: int = 0
    errors: list[str] = field(default_factory=list)

    def note_error(self, message: str) -> None:
        """Remember an error message (the first few only)."""
        if len(self.errors) < _MAX_ERRORS_KEPT:
            self.errors.append(message)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-able summary."""
        return {
            "asked": self.asked,
            "kept": self.kept,
            "dropped": {DROP_PARSE: 0, DROP_RATIO: 0, DROP_HTTP: 0, **self.dropped},
            "retries": self.retries,
            "errors": list(self.errors),
        }


def _item(row: Mapping[str, object], index: int) -> TeacherItem:
    prompt = row.get("prompt")
    if "good_res" in row or "bad_res" in row:
        good, bad = row.get("good_res"), row.get("bad_res")
        if not isinstance(prompt, str) or not isinstance(good, str) or not isinstance(bad, str):
            raise ValueError(f"row {index}: a BPO row needs string 'prompt', 'good_res' and 'bad_res'")
        return TeacherItem(instruction=prompt, good=good.strip(), bad=bad.strip())
    chosen, rejected = row.get("chosen"), row.get("rejected")
    if prompt is None or chosen is None or rejected is None:
        raise ValueError(f"row {index}: expected {{prompt, good_res, bad_res}} or {{prompt, chosen, rejected}}")
    good_text = completion_text(chosen) if isinstance(chosen, str) else _texts(chosen, index)
    bad_text = completion_text(rejected) if isinstance(rejected, str) else _texts(rejected, index)
    if isinstance(prompt, str):
        return TeacherItem(instruction=prompt, good=good_text.strip(), bad=bad_text.strip())
    messages = _message_list(prompt, index)
    last_user = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=-1)
    if last_user < 0:
        raise ValueError(f"row {index}: the prompt has no user message")
    return TeacherItem(
        instruction=messages[last_user]["content"],
        good=good_text.strip(),
        bad=bad_text.strip(),
        context=tuple(messages[:last_user]),
    )


def _message_list(value: object, index: int) -> list[Message]:
    if not isinstance(value, list):
        raise ValueError(f"row {index}: expected a string or a list of messages")
    out: list[Message] = []
    for m in value:
        if not isinstance(m, Mapping) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise ValueError(f"row {index}: messages need string 'role' and 'content'")
        out.append({"role": str(m["role"]), "content": str(m["content"])})
    return out


def _texts(value: object, index: int) -> str:
    return completion_text(_message_list(value, index))


def teacher_items(rows: Iterable[Mapping[str, object]]) -> list[TeacherItem]:
    """Normalise BPO rows / preference pairs (strings or conversational) into teacher items.

    Raises ``ValueError`` naming the row for rows of neither shape.
    """
    return [_item(row, i) for i, row in enumerate(rows)]


def teacher_messages(item: TeacherItem) -> list[Message]:
    """The chat messages sent to the teacher for one item: :data:`TEACHER_INSTRUCTION` as one user message."""
    context_block = (
        TEACHER_CONTEXT_BLOCK.format(conversation=render_conversation(list(item.context))) if item.context else ""
    )
    text = TEACHER_INSTRUCTION.format(
        context_block=context_block, instruction=item.instruction, good=item.good, bad=item.bad
    )
    return [{"role": "user", "content": text}]


def _unwrap(text: str) -> str:
    text = text.strip()
    if text.startswith("```") and text.endswith("```") and len(text) >= 6:
        text = text[3:-3]
        first_newline = text.find("\n")
        # Drop a language tag on the opening fence (```text).
        if first_newline >= 0 and text[:first_newline].strip().isalnum():
            text = text[first_newline + 1 :]
        text = text.strip()
    for opening, closing in (('"', '"'), ("\u201c", "\u201d"), ("'", "'")):
        if len(text) >= 2 and text.startswith(opening) and text.endswith(closing):
            text = text[1:-1].strip()
            break
    return text


def parse_optimized_prompt(text: str) -> str | None:
    """The optimized prompt in a teacher answer: the text between the last ``[Optimized Prompt]`` that comes
    before the last ``[End]`` and that ``[End]`` (markers matched case-insensitively), stripped of whitespace, a
    code fence or wrapping quotes. None when a marker is missing or nothing is left (or only a placeholder).
    """
    lowered = text.lower()
    end = lowered.rfind(OPTIMIZED_END.lower())
    if end < 0:
        return None
    start = lowered.rfind(OPTIMIZED_START.lower(), 0, end)
    if start < 0:
        return None
    prompt = _unwrap(text[start + len(OPTIMIZED_START) : end])
    if not prompt or prompt in {"...", "(the optimized prompt)"}:
        return None
    return prompt


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return min(max(float(value), 0.0), _MAX_RETRY_AFTER_S)
    except ValueError:
        return None


class _HTTPFailure(Exception):
    pass


async def _ask(
    client: httpx.AsyncClient,
    url: str,
    body: dict[str, Any],
    retries: int,
    backoff_s: float,
    stats: TeacherStats,
) -> str:
    """POST one chat completion and return the first choice's content; :class:`_HTTPFailure` after the retries."""
    attempt = 0
    while True:
        delay: float | None = None
        try:
            response = await client.post(url, json=body)
        except httpx.TransportError as exc:
            failure = f"{type(exc).__name__}: {exc}"
        else:
            if response.is_success:
                return _content(response)
            failure = f"HTTP {response.status_code}: {response.text[:200]}"
            if response.status_code != 429 and response.status_code < 500:
                raise _HTTPFailure(failure)
            delay = _retry_after(response)
        if attempt >= retries:
            raise _HTTPFailure(failure)
        attempt += 1
        stats.retries += 1
        await asyncio.sleep(delay if delay is not None else backoff_s * 2 ** (attempt - 1))


class _BadBody(Exception):
    pass


def _content(response: httpx.Response) -> str:
    try:
        data = response.json()
        content = data["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise _BadBody(f"unexpected response body: {response.text[:200]}") from exc
    if not isinstance(content, str):
        raise _BadBody("the response has no text content")
    return content


async def construct_bpo_pairs(
    rows: Iterable[Mapping[str, object]],
    base_url: str,
    model: str,
    api_key: str | None = None,
    concurrency: int = 4,
    timeout_s: float = 60,
    *,
    temperature: float = 0.7,
    max_tokens: int = 1024,
    retries: int = 2,
    backoff_s: float = 1.0,
) -> tuple[list[RewriterPair], TeacherStats]:
    """Ask the teacher at ``base_url`` for an optimized prompt per row; keep those passing BPO's ratio filter.

    Returns the kept ``{prompt, optimized_prompt}`` pairs in input order and a :class:`TeacherStats`, whose
    ``dropped`` counts ``parse_failure`` (no markers, empty, or an unexpected response body), ``ratio`` (failed
    :func:`~train.data.builders.bpo_word_ratio_ok`) and ``http_error`` (a non-retryable status, or retries
    exhausted). Raises ``ValueError`` up front for rows of neither accepted shape.
    """
    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    items = teacher_items(rows)
    stats = TeacherStats(asked=len(items))
    url = base_url.rstrip("/") + "/chat/completions"
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    timeout = httpx.Timeout(timeout_s, connect=min(10.0, timeout_s))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    semaphore = asyncio.Semaphore(concurrency)
    results: list[RewriterPair | None] = [None] * len(items)

    async def one(index: int, item: TeacherItem, client: httpx.AsyncClient) -> None:
        body: dict[str, Any] = {
            "model": model,
            "messages": teacher_messages(item),
            "temperature": temperature,
            "max_tokens": max_tokens,
        }
        async with semaphore:
            try:
                answer = await _ask(client, url, body, retries, backoff_s, stats)
            except _HTTPFailure as exc:
                stats.dropped[DROP_HTTP] += 1
                stats.note_error(f"row {index}: {exc}")
                return
            except _BadBody as exc:
                stats.dropped[DROP_PARSE] += 1
                stats.note_error(f"row {index}: {exc}")
                return
        optimized = parse_optimized_prompt(answer)
        if optimized is None:
            stats.dropped[DROP_PARSE] += 1
            stats.note_error(f"row {index}: no {OPTIMIZED_START} ... {OPTIMIZED_END} in the answer")
            return
        if not bpo_word_ratio_ok(item.instruction, optimized):
            stats.dropped[DROP_RATIO] += 1
            return
        results[index] = {"prompt": item.instruction, "optimized_prompt": optimized}

    async with httpx.AsyncClient(headers=headers, timeout=timeout, limits=limits) as client:
        await asyncio.gather(*(one(i, item, client) for i, item in enumerate(items)))
    pairs = [r for r in results if r is not None]
    stats.kept = len(pairs)
    logger.info("teacher %s at %s: %s", model, base_url, stats.as_dict())
    return pairs, stats
