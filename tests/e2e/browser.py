"""A headless Chromium for the browser tests and ``docs/screenshots.py``: Debian's ``chromium`` driven by its own
``chromedriver`` through Selenium, never a downloaded browser (Selenium Manager is kept offline)."""

from __future__ import annotations

import os
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
HOW_TO_INSTALL = "Debian's chromium and chromium-driver (scripts/system-packages.sh installs them)"


def browser_missing() -> str | None:
    """Why no browser test can run here, or None when they can."""
    for program in (CHROMIUM, CHROMEDRIVER):
        if not program.exists():
            return f"{program} is not installed: install {HOW_TO_INSTALL}"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed: pip install -e '.[dev]'"
    return None


def start_chromium(width: int = 1400, height: int = 1000):  # type: ignore[no-untyped-def]
    """A headless Chromium session (selenium ``WebDriver``); its browser console is kept (``get_log``)."""
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager never downloads anything
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--window-size={width},{height}", "--no-first-run", "--disable-extensions",
                "--disable-background-networking", "--disable-component-update"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=str(CHROMEDRIVER), log_output=os.devnull)
    return webdriver.Chrome(options=options, service=service)


__all__ = ["CHROMEDRIVER", "CHROMIUM", "browser_missing", "start_chromium"]
