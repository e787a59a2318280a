"""Settings, read in one place: YAML file < environment (``ALIGNGATE_<SECTION>__<KEY>``) < CLI flags.

The key names are the contract in DESIGN.md. ``load_settings`` is the only function that reads a config
file or the environment; everything else receives a ``Settings`` object.
"""

from __future__ import annotations

import os
import typing
from pathlib import Path
from typing import Any, Literal

import orjson
import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, EnvSettingsSource, SettingsConfigDict

from gateway.auth import parse_key

#: Environment variable through which ``aligngate serve`` hands the resolved settings to its workers.
RESOLVED_ENV = "ALIGNGATE_RESOLVED_CONFIG"

ARMS = ("control", "rewrite", "align", "rewrite+align")


class _Section(BaseModel):
    # A typo in a config key should fail loudly at start, not be ignored.
    model_config = ConfigDict(extra="forbid")


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


class HelperSettings(_Section):
    url: str | None = None
    model: str | None = None
    local: LocalModelSettings | None = None
    template: str = ""
    timeout_s: float = Field(30.0, gt=0)
    on_error: Literal["skip", "fail"] = "skip"


class HelpersSettings(_Section):
    rewriter: HelperSettings | None = None
    aligner: HelperSettings | None = None


class ExperimentSettings(_Section):
    name: str = "default"
    arms: dict[str, float] = Field(default_factory=lambda: {"control": 1.0})
    allow_override: bool = True

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
    url: str = "sqlite:///aligngate.db"
    log_bodies: bool = True


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


def load_settings(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Settings:
    """Resolve settings: defaults < YAML ``path`` < ``ALIGNGATE_*`` environment < ``overrides``."""
    yaml_data = read_yaml(path) if path is not None else {}
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


def check_servable(settings: Settings) -> None:
    """Refuse settings this build cannot serve, with a message that says what to do instead."""
    for backend in settings.backends:
        if backend.local is not None:
            raise ConfigError(
                f"backend {backend.name!r} uses `local:` (an in-process engine), which this version of "
                "aligngate does not provide yet; give it `urls:` of an OpenAI-compatible server (vLLM)."
            )
    if not settings.backends:
        raise ConfigError("no backends configured: add at least one under `backends:` (see config.example.yaml)")


def dump_resolved(settings: Settings) -> str:
    """Serialise resolved settings for worker processes (see ``RESOLVED_ENV``)."""
    return orjson.dumps(settings.model_dump(mode="json")).decode()


def settings_from_env() -> Settings:
    """Settings handed over by ``aligngate serve`` to a worker, else resolved from the environment alone."""
    resolved = os.environ.get(RESOLVED_ENV)
    if resolved:
        return Settings.model_validate(orjson.loads(resolved))
    return load_settings(os.environ.get("ALIGNGATE_CONFIG"))
