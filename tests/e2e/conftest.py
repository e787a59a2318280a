"""End-to-end fixtures (see ``support.py`` for the process classes).

``stack`` (session scope) is the common set-up: two fakes (``replica-a``, ``replica-b``) and one gateway with
the backends ``alpha`` (replica-a) and ``beta`` (replica-b). Tests that kill processes or need a special
configuration start their own through ``procs`` (function scope) or ``module_procs`` (module scope).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.e2e.support import Gateway, Procs, Stack, backend, gateway_config


@pytest.fixture(scope="session")
def log_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="aligngate-e2e-") as d:
        yield Path(d)


@pytest.fixture(scope="session")
def session_procs(log_dir: Path) -> Iterator[Procs]:
    procs = Procs(log_dir)
    try:
        yield procs
    finally:
        procs.stop_all()


@pytest.fixture(scope="module")
def module_procs(log_dir: Path) -> Iterator[Procs]:
    procs = Procs(log_dir)
    try:
        yield procs
    finally:
        procs.stop_all()


@pytest.fixture
def procs(log_dir: Path) -> Iterator[Procs]:
    procs = Procs(log_dir)
    try:
        yield procs
    finally:
        procs.stop_all()


@pytest.fixture(scope="session")
def stack(session_procs: Procs) -> Stack:
    a = session_procs.fake("replica-a")
    b = session_procs.fake("replica-b")
    gw = session_procs.gateway(gateway_config(backend("alpha", a.v1), backend("beta", b.v1)), tag="shared")
    return Stack(a, b, gw)


@pytest.fixture
def gw(stack: Stack) -> Gateway:
    return stack.gw


@pytest.fixture
def client(stack: Stack) -> Iterator[openai.OpenAI]:
    with stack.gw.client() as c:
        yield c
