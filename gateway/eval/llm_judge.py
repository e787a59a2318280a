"""The LLM judge: any OpenAI-compatible chat endpoint, pairwise, asked in both orders.

For each pair it sends two chat requests (temperature 0, ``max_tokens`` of the spec): the criterion's judge
prompt with the candidate as Assistant A and the baseline as B, then the other way round
(:mod:`gateway.eval.verdicts` has the prompts, the parsing and how the two verdicts combine). Both texts are
kept as the judgement's ``reasoning``, the parsed verdicts as ``verdicts``.

``url`` is the base URL as the OpenAI SDK takes it (``https://host/v1``); the key comes from ``api_key_env``.
:meth:`LLMJudge.start` checks the endpoint answers at all (``GET /models``; any HTTP status will do, a refused
connection will not). A connection failure during the run, or a 401/403/404 (a refused key or an unknown
model), is a :class:`JudgeError`; a 429, 5xx or timeout is retried twice, then the pair is left unjudged.
An answer whose verdict cannot be parsed is not an error: that order's verdict is invalid.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

import httpx

from gateway.eval.config import LLMJudgeSpec
from gateway.eval.judges import JudgeError, PairItem
from gateway.eval.records import Judgement, digest
from gateway.eval.verdicts import PROMPT_VERSION, combine, judge_messages, parse_verdict

__all__ = ["LLMJudge"]

logger = logging.getLogger(__name__)

RETRIES = 2
RETRY_PAUSE_S = 0.5


class _Unjudged(Exception):
    """One call failed after its retries."""


class LLMJudge:
    def __init__(self, name: str, spec: LLMJudgeSpec, concurrency: int) -> None:
        self.name = name
        self.spec = spec
        self.base = spec.url.rstrip("/")
        self.identity = digest(
            {
                "kind": "llm",
                "url": self.base,
                "model": spec.model,
                "max_tokens": spec.max_tokens,
                "prompt_version": PROMPT_VERSION,
            }
        )
        self._slots = asyncio.Semaphore(concurrency)
        self._client: httpx.AsyncClient | None = None

    async def start(self) -> None:
        headers: dict[str, str] = {}
        if self.spec.api_key_env:
            key = os.environ.get(self.spec.api_key_env)
            if not key:
                raise JudgeError(f"judge {self.name}: api_key_env names {self.spec.api_key_env}, which is not set")
            headers["Authorization"] = f"Bearer {key}"
        self._client = httpx.AsyncClient(base_url=self.base, headers=headers, timeout=self.spec.timeout_s)
        try:
            await self._client.get("/models", timeout=min(self.spec.timeout_s, 10.0))
        except httpx.HTTPError as exc:
            await self.close()
            raise JudgeError(f"judge {self.name}: cannot reach {self.base}: {exc or type(exc).__name__}") from None

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def ask(self, messages: list[dict[str, str]]) -> str:
        """The judge's text for one prompt (retried on 429/5xx/timeouts)."""
        assert self._client is not None, "start() first"
        body: dict[str, Any] = {
            "model": self.spec.model,
            "messages": messages,
            "temperature": 0.0,
            "max_tokens": self.spec.max_tokens,
        }
        last = ""
        for attempt in range(RETRIES + 1):
            if attempt:
                await asyncio.sleep(RETRY_PAUSE_S * attempt)
            try:
                async with self._slots:
                    resp = await self._client.post("/chat/completions", json=body)
            except httpx.TimeoutException:
                last = f"no answer within {self.spec.timeout_s:g} s"
                continue
            except httpx.TransportError as exc:
                raise JudgeError(f"judge {self.name}: cannot reach {self.base}: {exc or type(exc).__name__}") from None
            if resp.status_code == 429 or resp.status_code >= 500:
                last = f"status {resp.status_code}"
                continue
            if resp.status_code != 200:
                raise JudgeError(f"judge {self.name}: {self.base} answered {resp.status_code}: {resp.text[:200]}")
            try:
                content = resp.json()["choices"][0]["message"]["content"]
            except Exception:
                return ""  # not a chat completion: an invalid verdict, not a crash
            return content if isinstance(content, str) else ""
        raise _Unjudged(last)

    async def judge(self, item: PairItem) -> Judgement:
        """Both orders of ``item``, combined."""
        m = item.prompt.messages
        first, second = await asyncio.gather(
            self.ask(judge_messages(item.criterion, m, item.candidate, item.baseline_text)),
            self.ask(judge_messages(item.criterion, m, item.baseline_text, item.candidate)),
        )
        v1, v2 = parse_verdict(first), parse_verdict(second)
        combined = combine(v1, v2)
        return item.judgement(
            self.name, combined.outcome, combined.reason, verdicts=(v1, v2), reasoning=(first, second)
        )

    async def judge_all(self, items: Sequence[PairItem], done: Callable[[Judgement], None]) -> int:
        failed = 0

        async def one(item: PairItem) -> None:
            nonlocal failed
            try:
                judgement = await self.judge(item)
            except _Unjudged as exc:
                logger.warning(
                    "judge %s: %s/%s %s left unjudged: %s", self.name, item.prompt.set, item.prompt.id, item.arm, exc
                )
                failed += 1
                return
            done(judgement)

        tasks = [asyncio.ensure_future(one(item)) for item in items]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
        return failed
