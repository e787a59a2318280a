"""What a test does when a system program it drives (PostgreSQL, Redis, Chromium) is not installed.

Locally it skips, saying what to install (``make test`` installs them: ``scripts/system-packages.sh``); in CI
(``CI`` set, as ``.ci/run`` does) it fails, so a missing package can never turn a feature's tests into skips.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def missing(reason: str) -> NoReturn:
    """Skip (locally) or fail (CI) a test because ``reason`` (a missing program, and how to install it)."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; CI must have it (scripts/system-packages.sh installs it)", pytrace=False)
    pytest.skip(reason)
