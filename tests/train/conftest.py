"""Shared fixtures for the train/ tests: the data-file folder, one torch thread, the tiny random Llama."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture
def fixtures() -> Path:
    """The folder of small data files for these tests."""
    return FIXTURES


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Tiny models run far faster on one thread (no oversubscription on a busy machine); same results."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer random Llama with a locally built tokenizer, saved once (tests only read it)."""
    from tests.models.local.tiny import build_random

    return build_random(tmp_path_factory.mktemp("tiny-train"))
