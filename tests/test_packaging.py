"""The distribution lists every Python package explicitly: a package missing from pyproject.toml would be
absent from a plain (non-editable) `pip install .` while the tests, which run from the checkout, still pass."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_is_listed_in_pyproject() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    listed = set(config["tool"]["setuptools"]["packages"])
    found = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for top in ("core", "gateway", "models", "train")
        for init in (ROOT / top).rglob("__init__.py")
    }
    assert found - listed == set(), "packages missing from [tool.setuptools] packages"
    assert listed - found == set(), "listed packages that do not exist"


def test_the_base_install_has_no_torch() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    base = " ".join(config["project"]["dependencies"]).lower()
    assert "torch" not in base and "transformers" not in base
    assert any(dep.startswith("torch==") for dep in config["project"]["optional-dependencies"]["local"])


def test_the_pages_of_ui_are_package_data() -> None:
    """Every file of gateway/ui/static/ is matched by a package-data pattern (else a wheel serves no page)."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["gateway.ui"]
    package = ROOT / "gateway" / "ui"
    files = [p for p in (package / "static").iterdir() if p.is_file()]
    assert files
    missing = [p.name for p in files if not any(p.relative_to(package).match(pattern) for pattern in patterns)]
    assert missing == [], "files of gateway/ui/static/ no package-data pattern ships"


def test_the_shipped_adapters_are_package_data() -> None:
    """Every file of each shipped adapter (models/adapters/NAME/) is matched by a package-data pattern (else an
    installed aligngate could not load the embedded default's helpers)."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["models.adapters"]
    package = ROOT / "models" / "adapters"
    files = [p for p in package.glob("*/*") if p.is_file() and p.parent.name != "__pycache__"]
    assert {p.parent.name for p in files} >= {"aligner-smollm2-135m", "rewriter-smollm2-135m"}
    relative = [p.relative_to(package) for p in files]
    missing = [str(r) for r in relative if not any(r.match(pattern) for pattern in patterns)]
    assert missing == [], "files of models/adapters/ no package-data pattern ships"
