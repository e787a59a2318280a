"""Fixtures of the ``aligngate eval`` tests: processes started per test (fakes, gateways, the fake judge)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.support import Procs


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    procs = Procs(tmp_path)
    try:
        yield procs
    finally:
        procs.stop_all()
