"""A reward model behind a small batching queue, for scoring answers while serving (the aligner's reward gate).

* :class:`BatchScorer` — ``await score(items)`` scores ``(messages, answer)`` pairs; concurrent callers' pairs are
  scored together. The first pair to arrive waits up to ``max_wait_s`` for others (or until ``batch_size`` pairs
  are waiting), then the whole batch goes to one worker thread in one call of ``forward`` — one forward pass —
  while the event loop stays free. Each caller's pairs are first ``prepare``-d on that thread; a caller whose pairs
  cannot be prepared (a prompt the model's tokenizer cannot render) gets that error alone, the others are scored.
  A caller that stops waiting (a timeout, a cancellation) is dropped from its batch if the batch has not started;
  a batch that has started runs to its end, and its late results are dropped. Batches run one after another,
  never two at once (one model, one thread).
* :class:`RewardScorer` — a :class:`BatchScorer` over a reward model loaded with :mod:`models.reward`
  (``load_on_device``; each pair a finished assistant turn, ``scoring_item``; ``completion_scores`` in one forward
  pass per batch), loaded on its thread by :meth:`RewardScorer.start`. torch is imported there, never by importing
  this module.
* :func:`scoring_messages` — chat messages as the reward model's template takes them: role and text (the text
  parts of a content list, ``models.wire.read.content_text``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.wire.read import content_text

__all__ = ["BatchScorer", "RewardScorer", "ScoreItem", "scoring_messages"]

logger = logging.getLogger(__name__)

#: ``(chat messages, answer)``: the answer scored as a finished assistant turn to the messages.
ScoreItem = tuple[list[dict[str, str]], str]


def scoring_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, str]]:
    """``messages`` as plain ``{"role", "content"}`` strings (the text parts of a content list)."""
    return [{"role": str(m.get("role", "")), "content": content_text(m.get("content"))} for m in messages]


@dataclass(slots=True)
class _Job:
    items: list[ScoreItem]
    future: asyncio.Future[list[float]]


class BatchScorer:
    """Scores ``(messages, answer)`` pairs in batches across concurrent callers (see the module docstring).

    Args:
        prepare: one pair made ready for ``forward`` (runs on the worker thread; may raise for that caller).
        forward: the scores of prepared pairs, in order, in one pass (runs on the worker thread).
        batch_size: most pairs per ``forward`` call (a caller with more pairs than that is still one call).
        max_wait_s: how long the first pair of a batch waits for others.
    """

    def __init__(
        self,
        prepare: Callable[[ScoreItem], Any],
        forward: Callable[[list[Any]], list[float]],
        *,
        batch_size: int = 16,
        max_wait_s: float = 0.005,
    ) -> None:
        self._prepare = prepare
        self._forward = forward
        self.batch_size = batch_size
        self.max_wait_s = max_wait_s
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="reward-scorer")
        self._pending: list[_Job] = []
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        #: Sizes (pairs) of the batches run so far: what the batching did.
        self.batches: list[int] = []

    async def run_on_worker(self, fn: Callable[[], Any]) -> Any:
        """``fn()`` on the worker thread (where ``prepare`` and ``forward`` run)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    async def score(self, items: Sequence[ScoreItem]) -> list[float]:
        """The score of each pair, in order (raises what preparing or scoring raised)."""
        if not items:
            return []
        loop = asyncio.get_running_loop()
        job = _Job(list(items), loop.create_future())
        self._pending.append(job)
        if self._wake is None or self._task is None or self._task.done():
            self._wake = asyncio.Event()
            self._task = loop.create_task(self._collect(self._wake))
        self._wake.set()
        return await job.future

    def _waiting(self) -> int:
        return sum(len(j.items) for j in self._pending if not j.future.done())

    def _take(self) -> list[_Job]:
        """The next batch: waiting jobs in arrival order, up to ``batch_size`` pairs (at least one job)."""
        self._pending = [j for j in self._pending if not j.future.done()]
        batch: list[_Job] = []
        size = 0
        while self._pending and (not batch or size + len(self._pending[0].items) <= self.batch_size):
            job = self._pending.pop(0)
            batch.append(job)
            size += len(job.items)
        return batch

    async def _collect(self, wake: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await wake.wait()
            wake.clear()
            deadline = loop.time() + self.max_wait_s
            while self._waiting() < self.batch_size and (left := deadline - loop.time()) > 0:
                try:
                    await asyncio.wait_for(wake.wait(), left)
                except TimeoutError:
                    break
                wake.clear()
            batch = self._take()
            if batch:
                outcome = await loop.run_in_executor(self._executor, self._run, [j.items for j in batch])
                for job, result in zip(batch, outcome, strict=True):
                    if job.future.done():  # gave up waiting meanwhile
                        continue
                    if isinstance(result, BaseException):
                        job.future.set_exception(result)
                    else:
                        job.future.set_result(result)
            if self._pending:
                wake.set()

    def _run(self, jobs: list[list[ScoreItem]]) -> list[list[float] | BaseException]:
        """On the worker thread: prepare each job's pairs, score every prepared pair in one ``forward`` call."""
        prepared: list[list[Any] | BaseException] = []
        for items in jobs:
            try:
                prepared.append([self._prepare(item) for item in items])
            except Exception as exc:  # this caller's pairs only
                prepared.append(exc)
        flat = [p for job in prepared if not isinstance(job, BaseException) for p in job]
        if flat:
            self.batches.append(len(flat))
        try:
            scores = self._forward(flat) if flat else []
        except Exception as exc:  # the pass failed: every caller in it fails
            return [exc for _ in jobs]
        out: list[list[float] | BaseException] = []
        at = 0
        for job in prepared:
            if isinstance(job, BaseException):
                out.append(job)
            else:
                out.append([float(s) for s in scores[at : at + len(job)]])
                at += len(job)
        return out

    async def close(self) -> None:
        """Stop the queue: waiting callers get ``RuntimeError``; the worker thread is released."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        for job in self._pending:
            if not job.future.done():
                job.future.set_exception(RuntimeError("the reward scorer was closed"))
        self._pending = []
        self._executor.shutdown(wait=False, cancel_futures=True)


class RewardScorer(BatchScorer):
    """A :class:`BatchScorer` over a reward model (``models.reward``), loaded by :meth:`start`.

    Args:
        path: what ``aligngate train rm`` writes (adapter or merged), an HF directory, a GGUF file, ``builtin:NAME``.
        device: ``auto``, ``cpu`` or ``cuda`` (``models.reward.load_on_device``).
        max_length: tokens a pair is cut at.
    """

    def __init__(
        self, path: str | Path, *, device: str = "auto", max_length: int = 512, batch_size: int = 16,
        max_wait_s: float = 0.005,
    ) -> None:
        super().__init__(self._item, self._scores, batch_size=batch_size, max_wait_s=max_wait_s)
        self.path = str(path)
        self.device = device
        self.max_length = max_length
        self._model: Any = None
        self._tokenizer: Any = None

    async def start(self) -> None:
        """Load the model on the worker thread (raises ``models.reward.RewardModelError`` and what loading raises)."""
        if self._model is not None:
            return

        def load() -> None:
            from models.reward import load_on_device

            logger.info("loading reward model %s (gate)", self.path)
            self._model, self._tokenizer = load_on_device(self.path, self.device)

        await self.run_on_worker(load)

    def _item(self, item: ScoreItem) -> tuple[Any, Any]:
        from models.reward import scoring_item

        if self._tokenizer is None:
            raise RuntimeError("the reward scorer was not started")
        messages, answer = item
        return scoring_item(self._tokenizer, messages, answer)

    def _scores(self, items: list[Any]) -> list[float]:
        from models.reward import completion_scores

        return completion_scores(self._model, self._tokenizer, items, max_length=self.max_length,
                                 batch_size=max(len(items), 1))
