"""gateway/reload.py: what a SIGHUP reads again, what it swaps in, what it leaves for a restart, and a config that
does not load (the signal itself, in a real process: tests/e2e/test_reload.py)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.config import Settings
from gateway.reload import ConfigSource, Reloader, reread

BASE: dict[str, Any] = {
    "server": {"api_keys": ["sk-a", "sk-b"], "rate_limits": {"per_key": {"requests_per_minute": 10}}},
    "backends": [{"name": "m", "urls": ["http://up:8000/v1"]}],
}


def write(path: Path, config: dict[str, Any]) -> None:
    path.write_text(yaml.safe_dump(config), encoding="utf-8")


@pytest.fixture
def source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ConfigSource:
    for key in ("ALIGNGATE_RESOLVED_CONFIG", "ALIGNGATE_CONFIG_SOURCE"):
        monkeypatch.delenv(key, raising=False)
    write(tmp_path / "c.yaml", BASE)
    return ConfigSource(str(tmp_path / "c.yaml"), {"server": {"port": 9100}})


def test_the_source_travels_through_the_environment(source: ConfigSource, monkeypatch: pytest.MonkeyPatch) -> None:
    assert ConfigSource.from_env() is None
    monkeypatch.setenv("ALIGNGATE_CONFIG_SOURCE", source.to_env())
    assert ConfigSource.from_env() == source
    assert source.load().server.port == 9100  # the command line's flags apply again


def test_keys_and_limits_are_swapped_in_and_the_rest_left_for_a_restart(source: ConfigSource) -> None:
    current = source.load()
    assert source.path is not None
    changed = {"server": {"api_keys": ["sk-b", "sk-c", "sk-d"], "max_body_bytes": 10,
                          "rate_limits": {"per_user": {"tokens_per_minute": 5}, "backend": "redis://r:6379/0"}},
               "backends": [{"name": "other", "urls": ["http://x/v1"]}]}
    write(Path(source.path), changed)
    reloaded = reread(source, current)
    new = reloaded.settings
    assert new.server.api_keys == ["sk-b", "sk-c", "sk-d"]
    assert new.server.rate_limits.per_user.tokens_per_minute == 5
    assert new.server.rate_limits.per_key.requests_per_minute is None
    # what takes a restart stays as it was
    assert new.server.rate_limits.backend == "memory" and new.server.max_body_bytes == current.server.max_body_bytes
    assert [b.name for b in new.backends] == ["m"] and new.server.port == 9100
    assert reloaded.changes == ["server.api_keys: 2 -> 3 keys (2 added, 1 removed)",
                                "server.rate_limits: per_key, per_user changed; rate limits on"]
    assert set(reloaded.ignored) == {"backends", "server.max_body_bytes", "server.rate_limits.backend"}
    assert not any("sk-" in line for line in reloaded.changes + reloaded.ignored)


def test_the_reloader_applies_valid_configs_and_keeps_the_current_one_otherwise(
        source: ConfigSource, caplog: pytest.LogCaptureFixture) -> None:
    applied: list[Settings] = []
    reloader = Reloader(source, source.load(), applied.append)
    caplog.set_level(logging.INFO, logger="gateway.reload")
    assert reloader.reload() and applied == []  # unchanged: nothing to apply
    assert "keys and rate limits unchanged" in caplog.text
    assert source.path is not None
    for bad in ("server: {api_keys: ['']}\n", "server: [not, a, mapping\n", "serve: {}\n",
                "backends: []\n"):  # an invalid key, YAML, an unknown section, a config serve refuses
        Path(source.path).write_text(bad, encoding="utf-8")
        caplog.clear()
        assert not reloader.reload()
        assert "does not load; keeping the current keys and limits" in caplog.text
    assert applied == [] and reloader.settings.server.api_keys == ["sk-a", "sk-b"]
    write(Path(source.path), {**BASE, "server": {"api_keys": ["sk-z"]}})
    assert reloader.reload()
    assert [s.server.api_keys for s in applied] == [["sk-z"]] and reloader.settings is applied[0]
    assert "SIGHUP: reloaded from" in caplog.text and "rate limits off" in caplog.text
