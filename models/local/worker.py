"""The generation thread: continuous batching over a hand-written decode loop with a KV cache.

Requests wait in a bounded FIFO (``models.local.scheduler``); when the batch is idle the worker waits
``batch_window_s`` after the first arrival to gather more (up to ``max_batch`` rows), left-pads their
prompts and prefills them in one forward. While a batch is decoding, newcomers are prefilled separately
and merged into it at the next step boundary (no waiting for the batch to drain); finished and cancelled
rows leave at every step, so no compute is spent on them. Each step feeds every row its newest token
(plus, for greedy rows with prompt lookup on and a small batch, up to ``prompt_lookup_num_tokens`` draft
tokens that the same forward verifies: a row keeps the longest draft prefix the model agrees with, plus
the model's own next token, which is exactly what greedy decoding would have produced). On a GPU the model and
its KV cache live there; the step's small bookkeeping tensors are made on the CPU and copied over per forward.

Why not ``model.generate``: it cannot admit requests into a running batch, stop rows on per-row stop
strings or budgets, stream per row, nor do prompt lookup beyond batch size 1.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, replace

import torch
from transformers import PreTrainedTokenizerBase

from models.engine import EngineError, PromptTooLong
from models.local.detok import IncrementalDetokenizer, StopText
from models.local.kvcache import BatchKV, new_cache
from models.local.loader import LoadedModel
from models.local.lookup import NgramIndex
from models.local.requests import Event, Request, Row
from models.local.sampling import RowSampler, choose_tokens, make_generator
from models.local.scheduler import RequestQueue

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    max_batch: int = 16
    batch_window_s: float = 0.008
    max_queue: int = 256
    prompt_lookup_num_tokens: int = 0
    prompt_lookup_max_ngram: int = 3
    #: Drafts are verified only while the batch has at most this many rows (a big batch is already efficient).
    prompt_lookup_max_batch: int = 4
    #: Padded prompt tokens one prefill may take (a single longer prompt still goes alone).
    max_prefill_tokens: int = 8192


@dataclass(slots=True)
class EngineStats:
    """Counters since start (``BatchWorker.stats`` returns a snapshot)."""

    requests: int = 0
    prefill_batches: int = 0
    decode_steps: int = 0
    forward_calls: int = 0
    prompt_tokens: int = 0
    generated_tokens: int = 0
    rows_cancelled: int = 0
    max_rows: int = 0
    active_rows: int = 0
    waiting_requests: int = 0
    lookup_proposed: int = 0
    lookup_accepted: int = 0
    compactions: int = 0


class ThreadWorker:
    """What every runtime's worker shares: requests queued from event loops (``submit``, ``cancel``) and drained by
    one thread that runs the subclass's ``_run``; ``stats`` a snapshot of its counters."""

    def __init__(self, config: WorkerConfig, *, thread_name: str) -> None:
        self.config = config
        self._stats = EngineStats()
        self._queue = RequestQueue(config.max_queue, config.batch_window_s)
        self._rows: list[Row] = []
        self._outbox: list[tuple[Request, Event]] = []
        self._thread = threading.Thread(target=self._run, name=thread_name, daemon=True)

    @property
    def stats(self) -> EngineStats:
        """A snapshot of the counters."""
        return replace(self._stats, requests=self._queue.submitted, waiting_requests=self._queue.waiting)

    # ----------------------------------------------------------------- event-loop side
    def start(self) -> None:
        self._thread.start()

    def submit(self, request: Request) -> None:
        """Queue ``request``; raises ``EngineOverloaded`` at once when ``max_queue`` requests already wait."""
        self._queue.submit(request)

    def cancel(self, request: Request) -> None:
        """Drop ``request``: out of the queue now, or out of its batch at the next token."""
        self._queue.cancel(request)

    def stop(self) -> None:
        self._queue.close()

    def join(self, timeout: float | None = None) -> None:
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:  # the worker thread
        raise NotImplementedError

    def _prompt_ids(self, request: Request, tokenizer: PreTrainedTokenizerBase, max_positions: int) -> list[int] | None:
        """``request``'s prompt ids (kept on the request), or None when it cannot run: cancelled, or its error posted
        (a prompt that does not tokenize, an empty one, one that does not fit the context: ``PromptTooLong``)."""
        if request.cancelled:
            return None
        try:
            ids = request.prompt_ids if request.prompt_ids is not None else encode_prompt(tokenizer, request)
        except Exception as exc:
            self._post(request, EngineError(f"cannot tokenize the prompt: {exc}"))
            return None
        request.prompt_ids = ids
        if not ids:
            self._post(request, EngineError("the prompt is empty"))
            return None
        if len(ids) >= max_positions:
            self._post(request, PromptTooLong(len(ids), max_positions))
            return None
        return ids

    def _post(self, request: Request, event: Event) -> None:
        self._outbox.append((request, event))

    def _flush(self) -> None:
        """Hand the events posted so far to their event loops (one thread-safe call per loop)."""
        if not self._outbox:
            return
        outbox, self._outbox = self._outbox, []
        deliver_all(outbox)


class BatchWorker(ThreadWorker):
    """Owns the model on one thread; ``submit`` and ``cancel`` are called from event loops."""

    def __init__(self, loaded: LoadedModel, config: WorkerConfig, *, thread_name: str = "aligngate-local") -> None:
        super().__init__(config, thread_name=thread_name)
        self._loaded = loaded
        self._model = loaded.model
        #: Where the model runs: the batch's bookkeeping (ids, masks, positions) stays on the CPU and goes there
        #: for each forward; the KV cache lives there; the logits come back for sampling.
        self._device = loaded.model.device
        self._tokenizer = loaded.tokenizer
        self._kv = BatchKV.empty()

    # ----------------------------------------------------------------- worker thread
    def _run(self) -> None:
        try:
            with torch.inference_mode():
                while True:
                    group = self._queue.next_group(len(self._rows), self.config.max_batch)
                    if group is None:
                        break
                    try:
                        if group:
                            self._admit(group)
                        if self._rows:
                            self._step()
                    except Exception as exc:  # a model or tokenizer failure: fail the work at hand, keep serving
                        log.exception("local engine step failed")
                        self._fail_active(group, f"local engine failed: {type(exc).__name__}: {exc}")
                    self._flush()
        finally:
            self._queue.close()
            self._fail_active(self._queue.drain(), "the local engine is closed")
            self._flush()

    def _admit(self, group: list[Request]) -> None:
        """Tokenize, prefill (one left-padded forward) and merge ``group`` into the batch."""
        ready: list[tuple[Request, list[int]]] = []
        for request in group:
            ids = self._prompt_ids(request, self._tokenizer, self._loaded.max_positions)
            if ids is not None:
                ready.append((request, ids))
        admitted: list[tuple[Request, list[int]]] = []
        longest = 0
        for at, (request, ids) in enumerate(ready):
            longest_after = max(longest, len(ids))
            if admitted and longest_after * (len(admitted) + 1) > self.config.max_prefill_tokens:
                self._queue.requeue([r for r, _ in ready[at:]])
                break
            admitted.append((request, ids))
            longest = longest_after
        if admitted:
            self._prefill(admitted)

    def _prefill(self, admitted: list[tuple[Request, list[int]]]) -> None:
        width = max(len(ids) for _, ids in admitted)
        pad = self._loaded.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for _, ids in admitted], dtype=torch.long)
        mask = torch.tensor([[False] * (width - len(ids)) + [True] * len(ids) for _, ids in admitted])
        positions = (mask.long().cumsum(dim=1) - 1).clamp(min=0)
        incoming = BatchKV(new_cache(), torch.zeros((len(admitted), 0), dtype=torch.bool))
        logits = self._forward(incoming, input_ids, mask, positions, keep=1)[:, -1]
        incoming.commit(mask)
        expand = [g for g, (request, _) in enumerate(admitted) for _ in range(request.params.n)]
        if expand != list(range(len(admitted))):  # n > 1: the choices share one prefill
            incoming.select(expand)
            logits = logits.index_select(0, torch.tensor(expand, dtype=torch.long))
        rows = [self._new_row(request, ids, index) for request, ids in admitted for index in range(request.params.n)]
        tokens = choose_tokens(logits, [row.sampler for row in rows])
        self._kv.merge(incoming)
        self._rows.extend(rows)
        self._stats.prefill_batches += 1
        self._stats.prompt_tokens += sum(len(ids) for _, ids in admitted)
        self._stats.max_rows = max(self._stats.max_rows, len(self._rows))
        for row, token in zip(rows, tokens, strict=True):
            row.accept(token)
        self._stats.generated_tokens += len(rows)
        self._retire()

    def _new_row(self, request: Request, ids: list[int], index: int) -> Row:
        params = request.params
        seed = None if params.seed is None else params.seed + index
        sampler = RowSampler(params.temperature, params.top_p, make_generator(seed))
        lookup = request.lookup_tokens > 0 and sampler.greedy
        tokenizer = self._tokenizer

        def decode(tokens: list[int]) -> str:
            return str(tokenizer.decode(tokens, skip_special_tokens=True, clean_up_tokenization_spaces=False))

        return Row(
            request=request,
            index=index,
            prompt_tokens=len(ids),
            max_tokens=min(params.max_tokens, self._loaded.max_positions - len(ids)),
            sampler=sampler,
            detok=IncrementalDetokenizer(decode),
            stop=StopText(params.stop),
            eos_token_ids=self._loaded.eos_token_ids,
            ngram=NgramIndex(ids, self.config.prompt_lookup_max_ngram) if lookup else None,
            position=len(ids),
        )

    def _forward(
        self, kv: BatchKV, input_ids: torch.Tensor, new_mask: torch.Tensor, positions: torch.Tensor, *, keep: int = 0
    ) -> torch.Tensor:
        """Run the model over ``input_ids`` appended to ``kv`` (the caller commits ``new_mask``); float logits."""
        device = self._device
        out = self._model(
            input_ids=input_ids.to(device),
            attention_mask=kv.attention_mask(new_mask).to(device),
            position_ids=positions.to(device),
            past_key_values=kv.cache,
            use_cache=True,
            logits_to_keep=keep,
        )
        self._stats.forward_calls += 1
        logits: torch.Tensor = out.logits
        return logits.float().cpu()  # sampling reads it on the CPU (a no-op there; one copy a step from a GPU)

    def _step(self) -> None:
        """One forward over every live row (with drafts when prompt lookup applies)."""
        self._retire()  # rows cancelled since the last step leave before it
        rows = self._rows
        if not rows:
            return
        lookup_on = len(rows) <= self.config.prompt_lookup_max_batch
        drafts: list[list[int]] = []
        for row in rows:
            draft: list[int] = []
            if lookup_on and row.ngram is not None:
                draft = row.ngram.propose(min(row.request.lookup_tokens, row.budget - 1))
            drafts.append(draft)
        width = 1 + max(len(draft) for draft in drafts)
        pad = self._loaded.pad_token_id
        input_ids = torch.tensor(
            [
                [row.last_token, *draft] + [pad] * (width - 1 - len(draft))
                for row, draft in zip(rows, drafts, strict=True)
            ],
            dtype=torch.long,
        )
        new_mask = torch.tensor([[True] * (1 + len(d)) + [False] * (width - 1 - len(d)) for d in drafts])
        positions = torch.tensor([row.position for row in rows], dtype=torch.long)[:, None] + torch.arange(width)
        logits = self._forward(self._kv, input_ids, new_mask, positions)
        first = choose_tokens(logits[:, 0], [row.sampler for row in rows])
        produced: list[list[int]] = [[token] for token in first]
        if width > 1:
            predicted: list[list[int]] = logits.argmax(dim=-1).tolist()
            for r, draft in enumerate(drafts):
                if not draft:
                    continue
                agreed = 0
                while agreed < len(draft) and draft[agreed] == predicted[r][agreed]:
                    agreed += 1
                produced[r] = [*draft[:agreed], predicted[r][agreed]]
                new_mask[r, 1 + agreed :] = False
                self._stats.lookup_proposed += len(draft)
                self._stats.lookup_accepted += agreed
        self._kv.commit(new_mask)
        # Columns every row rejected sit at the right end: cut them off instead of leaving holes.
        spare = min(width - len(tokens) for tokens in produced)
        if spare:
            self._kv.truncate(spare)
        for row, tokens in zip(rows, produced, strict=True):
            row.position += len(tokens)
            for token in tokens:
                self._stats.generated_tokens += 1
                if row.accept(token):
                    break
        self._stats.decode_steps += 1
        self._retire()
        waste = self._kv.waste()
        if waste >= 32 and waste * 4 >= self._kv.columns:
            self._kv.compact()
            self._stats.compactions += 1

    def _retire(self) -> None:
        """Send this step's events, and drop finished and cancelled rows from the batch."""
        keep: list[int] = []
        for at, row in enumerate(self._rows):
            if row.request.cancelled:
                self._stats.rows_cancelled += 1
                continue
            event = row.event()
            if event is not None:
                self._post(row.request, event)
            if not row.finished:
                keep.append(at)
        if len(keep) != len(self._rows):
            self._kv.select(keep)
            self._rows = [self._rows[at] for at in keep]
        self._stats.active_rows = len(self._rows)

    def _fail_active(self, extra: list[Request] | None, message: str) -> None:
        failed = {id(row.request): row.request for row in self._rows}
        for request in extra or ():
            failed[id(request)] = request
        for request in failed.values():
            self._post(request, EngineError(message))
        self._rows = []
        self._kv = BatchKV.empty()
        self._stats.active_rows = 0



def encode_prompt(tokenizer: PreTrainedTokenizerBase, request: Request) -> list[int]:
    """A request's prompt ids: a raw prompt with the tokenizer's special tokens, or chat turns through its template."""
    if isinstance(request.prompt, str):
        return list(tokenizer(request.prompt, add_special_tokens=True)["input_ids"])
    messages = [{"role": turn.role, "content": turn.content} for turn in request.prompt]
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("the model's tokenizer has no chat template; use complete()")
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    if not isinstance(text, str):
        raise TypeError("apply_chat_template did not return text")
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def deliver_all(outbox: list[tuple[Request, Event]]) -> None:
    """Hand events to their event loops (one thread-safe call per loop); a closed loop cancels its requests."""
    by_loop: dict[int, list[tuple[Request, Event]]] = {}
    for item in outbox:
        by_loop.setdefault(id(item[0].loop), []).append(item)
    for items in by_loop.values():
        try:
            items[0][0].loop.call_soon_threadsafe(_deliver, items)
        except RuntimeError:  # that event loop is closed: nobody is listening any more
            for request, _ in items:
                request.cancelled = True


def _deliver(items: list[tuple[Request, Event]]) -> None:
    for request, event in items:
        if not request.cancelled:
            request.events.put_nowait(event)
