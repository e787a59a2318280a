"""A bad ``adapter:`` stops ``aligngate serve`` before any model loads: exit status 2 and the configuration error
that names the setting and the reason (a missing directory, an unknown built-in name, a truncated weights file),
no traceback."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from models.adapters import WEIGHTS_FILE, resolve_adapter
from tests.e2e.support import ROOT, clean_env


def serve_with_adapter(tmp_path: Path, adapter: str) -> subprocess.CompletedProcess[str]:
    config = {
        "backends": [{"name": "m", "urls": ["http://127.0.0.1:9/v1"]}],
        "helpers": {"aligner": {"local": {"model": "builtin:smollm2-135m-instruct", "adapter": adapter},
                                "template": "aligner-chat"}},
    }
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return subprocess.run([sys.executable, "-m", "gateway", "serve", "--config", str(path)], cwd=ROOT,
                          env=clean_env(), capture_output=True, text=True, timeout=60)


def truncated_copy(tmp_path: Path) -> str:
    copy = tmp_path / "truncated"
    shutil.copytree(resolve_adapter("builtin:aligner-smollm2-135m"), copy)
    weights = copy / WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:-1000])
    return str(copy)


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda tmp: str(tmp / "no-such-adapter"), "no such directory"),
        (lambda tmp: "builtin:no-such-adapter", "unknown built-in adapter"),
        (truncated_copy, "truncated or corrupt"),
    ],
    ids=["missing", "unknown-builtin", "truncated"],
)
def test_a_bad_adapter_is_a_configuration_error(tmp_path: Path, make: Callable[[Path], str], reason: str) -> None:
    done = serve_with_adapter(tmp_path, make(tmp_path))
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("aligngate: invalid configuration in "), done.stderr
    assert "helpers.aligner.local.adapter" in done.stderr and reason in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and "loading local model" not in done.stderr


def test_an_adapter_for_another_base_is_a_configuration_error(tmp_path: Path) -> None:
    """The shipped adapter (SmolLM2-135M's layer sizes) on a tiny Llama: refused from the base's config.json and
    the adapter's safetensors header before any model loads, not a shape error inside a worker."""
    from tests.models.local.tiny import build_random

    base = build_random(tmp_path / "tiny")
    config = {
        "backends": [{"name": "m", "local": {"model": str(base), "adapter": "builtin:aligner-smollm2-135m"}}],
    }
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    done = subprocess.run([sys.executable, "-m", "gateway", "serve", "--config", str(path)], cwd=ROOT,
                          env=clean_env(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert "backends[0].local.adapter" in done.stderr and "does not fit" in done.stderr, done.stderr
    assert "trained on another base model" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and "loading local model" not in done.stderr
