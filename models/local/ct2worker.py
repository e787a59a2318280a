"""The CTranslate2 runtime's generation thread: concurrent requests decoded together by ``generate_batch``.

Same contract as ``models.local.worker.BatchWorker`` (``submit``, ``cancel``, ``stop``, ``stats``; events
as ``Delta``s through each request's event loop), same queue (``models.local.scheduler``) and rows
(``models.local.requests``: incremental detokenization without partial UTF-8, stop strings, budgets).

Batching is per group, not continuous: when the worker is idle it waits ``batch_window_s`` after a first
request for others, then decodes the group (up to ``max_batch`` rows) in ``generate_batch`` calls; requests
arriving meanwhile wait for the group to finish. CTranslate2 takes one set of sampling settings per call,
so a group is split by them: the greedy rows together, sampled rows by (temperature, top_p) (and one-token
prompts apart, see ``_serve``). Seeds are not
honoured here: CTranslate2 draws from one random generator per runtime thread, seeded once (the engine
sends seeded sampled requests to a torch worker instead, see ``LocalEngine``). A step callback feeds each
token to its row as it is produced (streaming); its answer ``True`` ends that row in the batch, which is
how stop strings, per-row ``max_tokens`` and cancellation take effect at once. Prompt lookup is not
available (CTranslate2 has no draft verification).
"""

from __future__ import annotations

import logging
from typing import Any

from models.engine import EngineError
from models.local.ct2model import Ct2Model
from models.local.detok import IncrementalDetokenizer, StopText
from models.local.requests import Request, Row
from models.local.sampling import RowSampler, make_generator
from models.local.worker import ThreadWorker, WorkerConfig

log = logging.getLogger(__name__)

#: CTranslate2's ``sampling_topk`` for greedy decoding and for sampling over the whole vocabulary.
_GREEDY_TOPK = 1
_FULL_TOPK = 0


class _Closed(Exception):
    """The engine closed while a batch was decoding: its unfinished rows fail."""


class Ct2Worker(ThreadWorker):
    """Owns the CTranslate2 generator on one thread; ``submit`` and ``cancel`` are called from event loops
    (``stats``: ``forward_calls`` counts decode steps; prompt lookup stays 0)."""

    def __init__(self, loaded: Ct2Model, config: WorkerConfig, *, thread_name: str = "aligngate-ct2") -> None:
        super().__init__(config, thread_name=thread_name)
        self._loaded = loaded
        self._tokenizer = loaded.tokenizer
        self._step = -1
        self._error: BaseException | None = None

    # ----------------------------------------------------------------- worker thread
    def _run(self) -> None:
        try:
            while True:
                group = self._queue.next_group(0, self.config.max_batch)
                if group is None:
                    break
                try:
                    self._serve(group)
                except _Closed:
                    self._fail(group, "the local engine is closed")
                except Exception as exc:  # a runtime or tokenizer failure: fail the work at hand, keep serving
                    log.exception("local engine (ctranslate2) batch failed")
                    self._fail(group, f"local engine failed: {type(exc).__name__}: {exc}")
                self._rows = []
                self._stats.active_rows = 0
                self._flush()
        finally:
            self._queue.close()
            self._fail(self._queue.drain(), "the local engine is closed")
            self._flush()

    def _serve(self, group: list[Request]) -> None:
        """Tokenize and check ``group``, then decode it in one ``generate_batch`` per sampling setting."""
        batches: dict[tuple[object, ...], list[Row]] = {}
        max_positions = self._loaded.max_positions
        for request in group:
            ids = self._prompt_ids(request, self._tokenizer, max_positions)
            if ids is None:
                continue
            params = request.params
            greedy = RowSampler(params.temperature).greedy
            key: tuple[object, ...] = ("greedy",) if greedy else ("sample", params.temperature, params.top_p)
            # A one-token prompt in a batch of longer ones makes CTranslate2 report the others' prompt tokens
            # as generated (ctranslate2 4.x): such prompts get a call of their own.
            key = (*key, len(ids) == 1)
            batches.setdefault(key, []).extend(self._new_row(request, ids, index) for index in range(params.n))
            self._stats.prompt_tokens += len(ids)
        self._flush()
        for rows in batches.values():
            self._generate(rows)
            self._flush()

    def _new_row(self, request: Request, ids: list[int], index: int) -> Row:
        params = request.params
        tokenizer = self._tokenizer

        def decode(tokens: list[int]) -> str:
            return str(tokenizer.decode(tokens, skip_special_tokens=True, clean_up_tokenization_spaces=False))

        return Row(
            request=request,
            index=index,
            prompt_tokens=len(ids),
            max_tokens=min(params.max_tokens, self._loaded.max_positions - len(ids)),
            # The runtime samples; the row's sampler only records its settings (its generator is unused).
            sampler=RowSampler(params.temperature, params.top_p, make_generator(0)),
            detok=IncrementalDetokenizer(decode),
            stop=StopText(params.stop),
            eos_token_ids=self._loaded.eos_token_ids,
            position=len(ids),
        )

    def _generate(self, rows: list[Row]) -> None:
        """Decode ``rows`` (one sampling setting) in one call; tokens reach the rows through ``_on_token``."""
        rows = [row for row in rows if not row.request.cancelled]
        if not rows:
            return
        head = rows[0].request.params
        greedy = rows[0].sampler.greedy
        self._rows, self._step, self._error = rows, -1, None
        self._stats.active_rows = len(rows)
        self._stats.max_rows = max(self._stats.max_rows, len(rows))
        self._stats.prefill_batches += 1
        tokenizer = self._tokenizer
        prompts = [tokenizer.convert_ids_to_tokens(row.request.prompt_ids or []) for row in rows]
        results = self._loaded.generator.generate_batch(
            prompts,
            max_length=max(row.max_tokens for row in rows),
            end_token=sorted(self._loaded.eos_token_ids) or None,
            return_end_token=True,
            include_prompt_in_result=False,
            sampling_topk=_GREEDY_TOPK if greedy else _FULL_TOPK,
            sampling_topp=1.0 if greedy else head.top_p,
            sampling_temperature=1.0 if greedy else head.temperature,
            callback=self._on_token,
        )
        if self._error is not None:
            raise self._error
        if self._queue.closed:
            raise _Closed
        for row, result in zip(rows, results, strict=True):
            if row.request.cancelled:
                self._stats.rows_cancelled += 1
                continue
            if not row.finished:  # what the callback did not see (it sees every token in practice)
                for token in list(result.sequences_ids[0])[row.completion_tokens :]:
                    self._stats.generated_tokens += 1
                    if row.accept(token):
                        break
                if not row.finished:
                    row.end("length")
                event = row.event()
                if event is not None:
                    self._post(row.request, event)

    def _on_token(self, step: Any) -> bool:
        """CTranslate2's step callback: feed the token to its row; True ends that row's decoding."""
        try:
            if step.step != self._step:
                self._step = step.step
                self._stats.decode_steps += 1
                self._stats.forward_calls += 1
            row = self._rows[step.batch_id]
            if row.finished or row.request.cancelled or self._queue.closed:
                return True
            self._stats.generated_tokens += 1
            done = row.accept(int(step.token_id))
            event = row.event()
            if event is not None:
                self._post(row.request, event)
            if step.batch_id == self._last_live():
                self._flush()
            return bool(done)
        except BaseException as exc:  # never let an exception cross into the runtime's thread
            self._error = exc
            return True

    def _last_live(self) -> int:
        """The highest batch index still decoding: its token is the last of a step."""
        for at in range(len(self._rows) - 1, -1, -1):
            row = self._rows[at]
            if not row.finished and not row.request.cancelled:
                return at
        return -1

    def _fail(self, extra: list[Request], message: str) -> None:
        failed = {id(row.request): row.request for row in self._rows if not row.finished}
        for request in extra:
            if not request.cancelled:
                failed[id(request)] = request
        for request in failed.values():
            self._post(request, EngineError(message))
        self._rows = []
        self._stats.active_rows = 0


