"""SIGHUP: ``server.api_keys`` and ``server.rate_limits`` read again and swapped in, with no restart and no dropped
connection.

``aligngate serve`` hands its workers where their settings came from (:data:`SOURCE_ENV`: the config file, the
command line's overrides, whether the embedded default applies). On SIGHUP a worker resolves them again as at
start (:func:`reread`: file < ``ALIGNGATE_*`` environment < flags, then ``check_servable``) and, when they are
valid, swaps in the new API keys and rate limits at once (:class:`Reloader`, through the ``apply`` the app gives
it); a request in flight finishes under what it started with, and the buckets (memory or Redis) are kept, so the
levels carry over to the new limits. It logs what changed (how many keys were added and removed, never a key;
which rate-limit fields differ) and the other changes it leaves for a restart (backends, helpers, the store,
``server.rate_limits.backend``, ...). A config that does not load, or would not serve, is logged with its reason,
and the current keys and limits stay.

With ``--workers N`` the supervising process receives the signal (``gateway/server.py``): it forwards it to each
worker, and resolves the settings again itself so that a worker it starts later gets them too.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.config import ConfigError, RateLimitSettings, Settings, check_servable, load_settings

logger = logging.getLogger(__name__)

#: Environment variable through which ``aligngate serve`` tells workers where their settings came from.
SOURCE_ENV = "ALIGNGATE_CONFIG_SOURCE"
#: Rate-limit fields a reload leaves as they are: the store of the buckets is opened once, at start.
RESTART_ONLY = ("backend", "redis_timeout_s", "redis_prefix", "max_tracked")


@dataclass(frozen=True, slots=True)
class ConfigSource:
    """What ``load_settings`` was given at start: the file, the command line's overrides, the embedded default."""

    path: str | None = None
    overrides: dict[str, Any] | None = None
    embedded_default: bool = False

    def to_env(self) -> str:
        return orjson.dumps(
            {"path": self.path, "overrides": self.overrides, "embedded_default": self.embedded_default}).decode()

    @classmethod
    def from_env(cls) -> ConfigSource | None:
        raw = os.environ.get(SOURCE_ENV)
        if not raw:
            return None
        data = orjson.loads(raw)
        return cls(data.get("path"), data.get("overrides"), bool(data.get("embedded_default")))

    def load(self) -> Settings:
        """The settings resolved again (raises ``ConfigError``)."""
        settings = load_settings(self.path, self.overrides, embedded_default=self.embedded_default)
        check_servable(settings)
        return settings


@dataclass(frozen=True, slots=True)
class Reloaded:
    """The settings to serve with (``current`` with the new keys and limits), and what the reload did."""

    settings: Settings
    changes: list[str]
    ignored: list[str]


def _key_changes(old: list[str], new: list[str]) -> list[str]:
    if old == new:
        return []
    added, removed = len(set(new) - set(old)), len(set(old) - set(new))
    return [f"server.api_keys: {len(set(old))} -> {len(set(new))} keys ({added} added, {removed} removed)"]


def _limit_changes(old: RateLimitSettings, new: RateLimitSettings) -> list[str]:
    fields = [name for name in RateLimitSettings.model_fields
              if name not in RESTART_ONLY and getattr(old, name) != getattr(new, name)]
    if not fields:
        return []
    keys = ""
    if "keys" in fields:
        added = len(set(new.keys) - set(old.keys))
        removed = len(set(old.keys) - set(new.keys))
        keys = f" (keys: {added} added, {removed} removed, {len(set(old.keys) & set(new.keys))} kept)"
    state = "on" if new.enabled else "off"
    return [f"server.rate_limits: {', '.join(fields)} changed{keys}; rate limits {state}"]


def _ignored(old: Settings, new: Settings) -> list[str]:
    """What differs beyond the keys and limits: left for a restart."""
    out = [name for name in Settings.model_fields
           if name != "server" and getattr(old, name) != getattr(new, name)]
    out += [f"server.{name}" for name in type(old.server).model_fields
            if name not in ("api_keys", "rate_limits") and getattr(old.server, name) != getattr(new.server, name)]
    out += [f"server.rate_limits.{name}" for name in RESTART_ONLY
            if getattr(old.server.rate_limits, name) != getattr(new.server.rate_limits, name)]
    return out


def reread(source: ConfigSource, current: Settings) -> Reloaded:
    """``current`` with the API keys and rate limits ``source`` resolves to now (raises ``ConfigError``)."""
    new = source.load()
    limits = new.server.rate_limits.model_copy(
        update={name: getattr(current.server.rate_limits, name) for name in RESTART_ONLY})
    server = current.server.model_copy(update={"api_keys": list(new.server.api_keys), "rate_limits": limits})
    return Reloaded(
        current.model_copy(update={"server": server}),
        _key_changes(current.server.api_keys, new.server.api_keys)
        + _limit_changes(current.server.rate_limits, new.server.rate_limits),
        _ignored(current, new),
    )


class Reloader:
    """A worker's reload: on SIGHUP, :func:`reread` and, when valid and different, ``apply`` the new settings."""

    def __init__(self, source: ConfigSource, settings: Settings, apply: Callable[[Settings], None]) -> None:
        self.source = source
        self.settings = settings
        self._apply = apply
        self._loop: asyncio.AbstractEventLoop | None = None

    def reload(self) -> bool:
        """Read the config again and swap in its keys and limits; False (and logged) when it does not load."""
        where = self.source.path or "the environment"
        try:
            reloaded = reread(self.source, self.settings)
        except ConfigError as exc:
            logger.error("SIGHUP: %s does not load; keeping the current keys and limits: %s", where, exc)
            return False
        except Exception:
            logger.exception("SIGHUP: reading %s failed; keeping the current keys and limits", where)
            return False
        if reloaded.ignored:
            logger.warning("SIGHUP: changes to %s take a restart; ignored", ", ".join(reloaded.ignored))
        if not reloaded.changes:
            logger.info("SIGHUP: %s read again; keys and rate limits unchanged", where)
            return True
        self._apply(reloaded.settings)
        self.settings = reloaded.settings
        logger.warning("SIGHUP: reloaded from %s: %s", where, "; ".join(reloaded.changes))
        return True

    def install(self) -> bool:
        """Reload on SIGHUP in this (main) thread's running loop; False where signals cannot be handled here."""
        if threading.current_thread() is not threading.main_thread():
            return False
        loop = asyncio.get_running_loop()
        try:
            loop.add_signal_handler(signal.SIGHUP, self.reload)
        except (NotImplementedError, RuntimeError, ValueError, AttributeError):
            return False
        self._loop = loop
        # a worker of several starts with SIGHUP blocked (gateway/server.py): one sent during its start-up is
        # delivered now
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})
        return True

    def uninstall(self) -> None:
        if self._loop is not None:
            self._loop.remove_signal_handler(signal.SIGHUP)
            signal.signal(signal.SIGHUP, signal.SIG_IGN)  # a late SIGHUP must not kill a worker that is stopping
            self._loop = None
