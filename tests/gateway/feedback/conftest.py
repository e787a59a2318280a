"""Fixtures of the feedback and preference tests: stores on a SQLite file of the test's own."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.config import StoreSettings
from gateway.store.store import Store


@pytest.fixture
async def stores(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    opened: list[Store] = []

    async def open_store(**kw: Any) -> Store:
        store = Store(StoreSettings(url=f"sqlite:///{tmp_path / 'feedback.db'}", **kw))
        await store.start()
        opened.append(store)
        return store

    yield open_store
    for store in opened:
        await store.close()
