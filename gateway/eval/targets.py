"""What answers the prompts: a running gateway, an in-process gateway, or two sides compared.

Every target is driven the same way, through the gateway's own HTTP API: ``POST /v1/chat/completions`` with the
arm forced (``X-Aligngate-Arm``) and the trace on (``X-Aligngate-Trace: 1``), so the answer comes back with the
rewrite, the raw answer, the helpers' milliseconds and skip reasons.

* :class:`UrlTarget` — a running gateway (``target.url``), over the network; its API key from ``api_key_env``.
* :class:`InProcessTarget` — ``gateway.app.create_app(settings)`` driven through ``httpx.ASGITransport`` with its
  lifespan entered: the same pipeline code, no server. Settings: a gateway config file, or the embedded default;
  the trace store, shadow mode and API keys are turned off (an evaluation must not write into a production
  store), and arms may be forced.
* :class:`PairTarget` — two sides (``candidate``, ``baseline``), each its own in-process gateway: a model alone
  (a remote endpoint or a local model as the gateway's one backend, answered on ``control``) or one arm of a
  gateway config (so two aligner configurations, say, are compared answer against answer).

``identity_of(arm)`` (part of every answer's cache key, with :meth:`Target.answer_arm`) names what makes answers
differ: the URL and model of a running gateway; of an in-process one, the backend asked and the helpers the arm
runs (model names, URLs, templates, token limits, the aligner's stream mode and gate, and the size and
modification time of local model and adapter files, so a retrained adapter invalidates its answers and a new
aligner keeps ``control`` cached); timeouts, retries and the store do not count. A side of a
:class:`PairTarget` that is a gateway's arm has that arm's key, so answers made by a plain run of the same
config are reused.

Errors: :class:`TargetError` (unreachable, a refused key, an unknown model, an arm the gateway refuses): the
evaluation cannot go on. :class:`AnswerFailed` (a 5xx or a timeout after two retries): that answer is counted as
failed, not cached, and retried by the next run.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from gateway.config import ConfigError, LocalModelSettings, Settings, load_settings
from gateway.eval.config import GenerationSpec, ModelSpec, TargetSpec
from gateway.eval.records import Prompt, digest
from models.adapters import BUILTIN_PREFIX, resolve_adapter

__all__ = [
    "AnswerFailed",
    "Generated",
    "InProcessTarget",
    "PairTarget",
    "Target",
    "TargetError",
    "UrlTarget",
    "build_target",
    "fingerprint",
    "pair_target",
]

logger = logging.getLogger(__name__)

RETRIES = 2
RETRY_PAUSE_S = 0.5


class TargetError(Exception):
    """The target cannot be used (unreachable, refuses the key, the model or an arm): the run stops."""


class AnswerFailed(Exception):
    """One answer failed (a server error or a timeout, retried): counted, not cached."""


@dataclass(frozen=True, slots=True)
class Generated:
    text: str
    latency_ms: float
    raw: str | None = None
    rewritten_prompt: str | None = None
    rewriter_skipped: str | None = None
    aligner_skipped: str | None = None
    rewriter_ms: float | None = None
    aligner_ms: float | None = None
    finish_reason: str | None = None


def fingerprint(path: str | None) -> object:
    """What identifies a local model file or folder for caching: size and mtime of it (or of its files)."""
    if path is None or path.startswith("builtin:"):
        return path
    p = Path(path).expanduser()
    try:
        if p.is_dir():
            return [path, sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in p.iterdir() if f.is_file())]
        st = p.stat()
        return [path, st.st_size, st.st_mtime_ns]
    except OSError:
        return path


def local_identity(local: LocalModelSettings) -> list[object]:
    """A local model, its adapter and its engine for caching; a shipped adapter (``builtin:NAME``, validated with
    the settings) by its package folder's files, so a retrained one invalidates its answers. The runtime, the
    weights' precision and the device count only when they are not the defaults (``torch``; ``auto`` or
    ``float32``; ``auto`` or ``cpu``), so keys made before they were settings stay valid. (``auto`` is not
    resolved here, where torch is not loaded: answers cached on a CPU are reused by a GPU host's ``auto`` run;
    name ``device: cuda`` to keep them apart.)"""
    adapter = local.adapter
    if adapter is not None and adapter.startswith(BUILTIN_PREFIX):
        found: list[object] = [fingerprint(local.model), [adapter, fingerprint(str(resolve_adapter(adapter)))]]
    else:
        found = [fingerprint(local.model), fingerprint(adapter)]
    dtype = "float32" if local.dtype == "auto" else local.dtype
    if (local.runtime, dtype) != ("torch", "float32"):
        found.append([local.runtime, dtype])
    if local.device == "cuda":
        found.append(["cuda"])
    return found


def settings_identity(settings: Settings, arm: str | None = None, model: str | None = None) -> str:
    """What makes an in-process gateway's answers differ; with ``arm`` (the ``X-Aligngate-Arm`` value) only the
    helpers that arm runs count, so changing the aligner keeps ``control`` and ``rewrite`` answers cached; with
    ``model`` only that backend counts."""
    backends = [
        {
            "name": b.name,
            "urls": b.urls,
            "upstream_model": b.upstream_model,
            "local": None if b.local is None else local_identity(b.local),
        }
        for b in settings.backends
        if model is None or b.name == model
    ]
    uses = {"control": (), "rewrite": ("rewriter",), "align": ("aligner",)}.get(arm or "", ("rewriter", "aligner"))
    helpers: dict[str, object] = {}
    for name in uses:
        h = getattr(settings.helpers, name)
        if h is not None:
            part: dict[str, object] = {
                "url": h.url,
                "model": h.model,
                "template": h.template,
                "max_tokens": h.max_tokens,
                "max_prompt_words": h.max_prompt_words,
                "local": None if h.local is None else local_identity(h.local),
            }
            if name == "aligner":
                gate = h.gate
                part["stream"] = h.stream
                part["gate"] = None if gate is None else [fingerprint(gate.reward_model), gate.margin, gate.max_length]
            helpers[name] = part
    return digest({"kind": "gateway", "backends": backends, "helpers": helpers})


def _error_message(resp: httpx.Response) -> str:
    try:
        body = resp.json()
        message = body["error"]["message"]
        if isinstance(message, str):
            return " ".join(message.split())
    except Exception:  # not the OpenAI error shape
        pass
    return " ".join(resp.text.split())[:200] or resp.reason_phrase


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _ms(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


class Target:
    """A chat endpoint with arms. ``arms`` maps each arm this target answers to (model, ``X-Aligngate-Arm``)."""

    description: str
    identity: str

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.routes: dict[str, tuple[str, str]] = {}
        self._client: httpx.AsyncClient | None = None

    def identity_of(self, arm: str) -> str:
        """The part of an answer's cache key that names what answers ``arm`` ("" until known)."""
        return self.identity

    def answer_arm(self, arm: str) -> str:
        """The arm named in an answer's cache key: the ``X-Aligngate-Arm`` value ``arm`` is answered on."""
        return self.routes[arm][1] if arm in self.routes else arm

    @property
    def arms(self) -> tuple[str, ...]:
        return tuple(self.routes)

    async def __aenter__(self) -> Target:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def start(self) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def _headers(self, arm: str) -> dict[str, str]:
        return {"X-Aligngate-Arm": arm, "X-Aligngate-Trace": "1"}

    async def generate(self, arm: str, prompt: Prompt, generation: GenerationSpec) -> Generated:
        """``prompt``'s answer on ``arm``; :class:`TargetError` or :class:`AnswerFailed` when there is none."""
        assert self._client is not None, "start() first"
        model, header_arm = self.routes[arm]
        body: dict[str, Any] = {
            "model": model,
            "messages": prompt.wire(),
            "temperature": generation.temperature,
            "max_tokens": generation.max_tokens,
            "stream": False,
        }
        if generation.seed is not None:
            body["seed"] = generation.seed
        last = ""
        for attempt in range(RETRIES + 1):
            if attempt:
                await asyncio.sleep(RETRY_PAUSE_S * attempt)
            started = time.perf_counter()
            try:
                resp = await self._client.post("/chat/completions", json=body, headers=self._headers(header_arm))
            except httpx.TimeoutException:
                last = f"no answer within {self.timeout_s:g} s"
                continue
            except httpx.TransportError as exc:
                raise TargetError(f"cannot reach {self.description}: {exc or type(exc).__name__}") from None
            latency_ms = (time.perf_counter() - started) * 1000.0
            if resp.status_code == 200:
                return self._parse(resp, latency_ms)
            if resp.status_code in (429,) or resp.status_code >= 500:
                last = f"status {resp.status_code}: {_error_message(resp)}"
                continue
            raise TargetError(
                f"{self.description} refused the {arm!r} arm (status {resp.status_code}): {_error_message(resp)}"
            )
        raise AnswerFailed(last)

    def _parse(self, resp: httpx.Response, latency_ms: float) -> Generated:
        try:
            body = resp.json()
            choice = body["choices"][0]
            text = choice["message"]["content"]
        except Exception:
            raise AnswerFailed(f"not a chat completion: {resp.text[:200]!r}") from None
        if not isinstance(text, str):
            raise AnswerFailed("the answer has no text content")
        found = body.get("aligngate")
        trace: dict[str, Any] = found if isinstance(found, dict) else {}
        ms = trace.get("helper_ms")
        helper_ms: dict[str, Any] = ms if isinstance(ms, dict) else {}
        return Generated(
            text=text,
            latency_ms=latency_ms,
            raw=_text(trace.get("original_content")),
            rewritten_prompt=_text(trace.get("rewritten_prompt")),
            rewriter_skipped=_text(trace.get("rewriter_skipped")),
            aligner_skipped=_text(trace.get("aligner_skipped")),
            rewriter_ms=_ms(helper_ms.get("rewriter")),
            aligner_ms=_ms(helper_ms.get("aligner")),
            finish_reason=_text(choice.get("finish_reason")),
        )


def _v1(url: str) -> str:
    url = url.rstrip("/")
    return url if url.endswith("/v1") else f"{url}/v1"


class UrlTarget(Target):
    """A running gateway at ``spec.url``."""

    def __init__(self, spec: TargetSpec, arms: tuple[str, ...]) -> None:
        super().__init__(spec.timeout_s)
        assert spec.url is not None
        self.base = _v1(spec.url)
        self.model = spec.model
        self.api_key_env = spec.api_key_env
        self._arms = arms
        self.description = f"the gateway at {self.base}"
        self.identity = ""

    async def start(self) -> None:
        headers: dict[str, str] = {}
        if self.api_key_env:
            key = os.environ.get(self.api_key_env)
            if not key:
                raise TargetError(f"target.api_key_env names {self.api_key_env}, which is not set")
            headers["Authorization"] = f"Bearer {key}"
        self._client = httpx.AsyncClient(base_url=self.base, headers=headers, timeout=self.timeout_s)
        try:
            resp = await self._client.get("/models", timeout=min(self.timeout_s, 10.0))
        except httpx.HTTPError as exc:
            await self.close()
            raise TargetError(f"cannot reach {self.description}: {exc or type(exc).__name__}") from None
        if resp.status_code != 200:
            await self.close()
            raise TargetError(
                f"{self.description} answered GET /v1/models with {resp.status_code}: {_error_message(resp)}"
            )
        if self.model is None:
            try:
                self.model = str(resp.json()["data"][0]["id"])
            except Exception:
                await self.close()
                raise TargetError(f"{self.description} lists no models; set target.model") from None
        self.routes = {arm: (self.model, arm) for arm in self._arms}
        self.identity = digest({"kind": "url", "url": self.base, "model": self.model})


class InProcessTarget(Target):
    """``create_app(settings)`` in this process, through ``httpx.ASGITransport`` (lifespan entered)."""

    def __init__(
        self, settings: Settings, routes: Mapping[str, tuple[str, str]], description: str, timeout_s: float
    ) -> None:
        super().__init__(timeout_s)
        self.settings = settings
        self.routes = dict(routes)
        self.description = description
        self.identity = settings_identity(settings)
        self._lifespan: AbstractAsyncContextManager[Any] | None = None

    def identity_of(self, arm: str) -> str:
        if arm not in self.routes:
            return self.identity
        model, header_arm = self.routes[arm]
        return settings_identity(self.settings, header_arm, model)

    async def start(self) -> None:
        from gateway.app import create_app

        try:
            app = create_app(self.settings)
        except ConfigError as exc:
            raise TargetError(f"{self.description}: {' '.join(str(exc).split())}") from None
        self._lifespan = app.lifespan()
        try:
            await self._lifespan.__aenter__()
        except ConfigError as exc:
            self._lifespan = None
            raise TargetError(f"{self.description}: {' '.join(str(exc).split())}") from None
        except Exception as exc:
            self._lifespan = None
            raise TargetError(f"{self.description} did not start: {type(exc).__name__}: {exc}") from None
        self._client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://aligngate.in-process/v1", timeout=self.timeout_s
        )

    async def close(self) -> None:
        await super().close()
        if self._lifespan is not None:
            lifespan, self._lifespan = self._lifespan, None
            with contextlib.suppress(Exception):
                await lifespan.__aexit__(None, None, None)


#: What an in-process evaluation turns off in the gateway's settings (see the module docstring).
EVAL_OVERRIDES: dict[str, Any] = {
    "store": {"enabled": False},
    "experiment": {"allow_override": True, "shadow": {"share": 0.0}},
    "server": {"api_keys": []},
}


def _gateway_settings(path: str | None, model: str | None, where: str) -> tuple[Settings, str]:
    """A gateway config (``None``: the embedded default) with :data:`EVAL_OVERRIDES`, and the backend to ask."""
    try:
        settings = load_settings(path, EVAL_OVERRIDES, embedded_default=path is None)
    except ConfigError as exc:
        raise TargetError(" ".join(str(exc).split())) from None
    if not settings.backends:
        raise TargetError(f"the gateway config {path} has no backends")
    model = model or settings.backends[0].name
    if settings.backend(model) is None:
        raise TargetError(f"{where} {model!r} is not a backend of {path or 'the embedded default'}")
    return settings, model


def in_process_target(spec: TargetSpec, arms: tuple[str, ...]) -> InProcessTarget:
    path = spec.gateway_config or None
    settings, model = _gateway_settings(path, spec.model, "target.model")
    what = f"the in-process gateway ({path or 'embedded default'})"
    return InProcessTarget(settings, {arm: (model, arm) for arm in arms}, what, spec.timeout_s)


def _backend(name: str, spec: ModelSpec) -> dict[str, Any]:
    if spec.local is not None:
        return {"name": name, "local": {"model": spec.local.model, "adapter": spec.local.adapter}}
    assert spec.url is not None
    return {"name": name, "urls": [_v1(spec.url)], "upstream_model": spec.model, "api_key_env": spec.api_key_env}


def _side(name: str, spec: ModelSpec, timeout_s: float) -> InProcessTarget:
    """One side of a :class:`PairTarget`: a gateway config's arm, or a model as the one backend of a gateway."""
    if spec.gateway_config is not None:
        path = spec.gateway_config or None
        settings, model = _gateway_settings(path, spec.model, f"target.{name}.model")
        what = f"target.{name} (arm {spec.arm} of {path or 'the embedded default'})"
        return InProcessTarget(settings, {name: (model, spec.arm)}, what, timeout_s)
    data = {
        "backends": [_backend(name, spec)],
        "experiment": {"name": "eval", "arms": {"control": 1}, "allow_override": True},
        "store": {"enabled": False},
    }
    try:
        settings = Settings.model_validate(data)
    except ValueError as exc:
        raise TargetError(f"target.{name}: {' '.join(str(exc).split())}") from None
    what = f"target.{name} ({spec.url or (spec.local.model if spec.local else '')})"
    return InProcessTarget(settings, {name: (name, "control")}, what, timeout_s)


class PairTarget(Target):
    """``candidate`` and ``baseline``, each answered by its own in-process gateway, started on its first answer
    (a side whose answers are all cached loads no model) and closed together."""

    def __init__(self, sides: Mapping[str, InProcessTarget], timeout_s: float) -> None:
        super().__init__(timeout_s)
        self.sides = dict(sides)
        self.routes = {arm: side.routes[arm] for arm, side in self.sides.items()}
        self.description = " vs ".join(side.description for side in self.sides.values())
        self.identity = digest([side.identity_of(arm) for arm, side in self.sides.items()])
        self._started: dict[str, asyncio.Task[None]] = {}

    def identity_of(self, arm: str) -> str:
        return self.sides[arm].identity_of(arm) if arm in self.sides else self.identity

    async def start(self) -> None:
        self._started = {}

    async def close(self) -> None:
        started, self._started = self._started, {}
        for task in started.values():
            task.cancel()
        await asyncio.gather(*started.values(), return_exceptions=True)
        for side in self.sides.values():
            await side.close()

    async def generate(self, arm: str, prompt: Prompt, generation: GenerationSpec) -> Generated:
        side = self.sides[arm]
        if arm not in self._started:
            self._started[arm] = asyncio.ensure_future(side.start())
        await asyncio.shield(self._started[arm])
        return await side.generate(arm, prompt, generation)


def pair_target(spec: TargetSpec) -> PairTarget:
    """``candidate`` against ``baseline`` (see :class:`PairTarget`)."""
    assert spec.candidate is not None and spec.baseline is not None
    sides = {"candidate": spec.candidate, "baseline": spec.baseline}
    return PairTarget({name: _side(name, side, spec.timeout_s) for name, side in sides.items()}, spec.timeout_s)


def build_target(spec: TargetSpec, arms: tuple[str, ...]) -> Target:
    """The target ``spec`` names (see :func:`gateway.eval.config.target_kind`)."""
    if spec.url is not None:
        return UrlTarget(spec, arms)
    if spec.candidate is not None or spec.baseline is not None:
        return pair_target(spec)
    return in_process_target(spec, arms)
