"""Fixtures of the local-engine tests: tiny models built once per session, engines started per test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from models.local import LocalEngine
from tests.models.local.tiny import Script, build_random, build_scripted

MakeEngine = Callable[..., Awaitable[LocalEngine]]


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 2-layer Llama with its byte-fallback tokenizer and chat template."""
    return build_random(tmp_path_factory.mktemp("tiny-random"))


@pytest.fixture(scope="session")
def script(tmp_path_factory: pytest.TempPathFactory) -> Script:
    """A model that answers any prompt ending in <|assistant|> with ``script.text`` and then EOS."""
    return build_scripted(tmp_path_factory.mktemp("tiny-scripted"))


@pytest.fixture
async def make_engine(tmp_path: Path) -> AsyncIterator[MakeEngine]:
    """``engine = await make_engine(model_dir, **options)``: a started LocalEngine, closed after the test."""
    engines: list[LocalEngine] = []

    async def make(model: Path | str, **options: Any) -> LocalEngine:
        options.setdefault("cache_dir", tmp_path / "cache")
        engine = LocalEngine(str(model), **options)
        await engine.start()
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        await engine.close()
