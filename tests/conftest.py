"""Fixtures shared across the test tree: the real servers the store and rate-limit tests drive."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fakes.redis import LocalRedis
from tests.system import missing


@pytest.fixture(scope="module")
def redis_server() -> Iterator[LocalRedis]:
    """A throwaway redis-server on a free port for the module (skips locally, fails in CI, when not installed)."""
    found = LocalRedis.find()
    if found is None:
        missing(LocalRedis.missing)
    try:
        yield found
    finally:
        found.destroy()
