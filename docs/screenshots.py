"""Screenshots of the /ui pages for the README: ``python docs/screenshots.py`` from the repository root.

Starts what the browser tests start (a fake backend, fake rewriter and aligner servers, a gateway with the
trace store in a temporary folder), drives Debian's headless Chromium (``tests/e2e/browser.py``), and writes
``docs/ui-playground.png`` (a prompt through control and rewrite+align: the rewrite and the correction as word
diffs) and ``docs/ui-experiment.png`` (the experiment tab after a few rated requests).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from tests.e2e.browser import browser_missing, start_chromium  # noqa: E402
from tests.e2e.support import Procs, backend, gateway_config  # noqa: E402

DOCS = ROOT / "docs"
REWRITE = "Explain step by step how to bake a simple loaf of bread at home, with safe oven temperatures."
ALIGNER_ECHO = r"^.*\| (.*) ASSISTANT:"
CORRECTION = "{echo} Let the loaf cool before slicing, and use oven gloves: the tin is hot."


def main() -> int:
    why = browser_missing()
    if why is not None:
        print(why, file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="aligngate-shots-") as tmp:
        procs = Procs(Path(tmp))
        try:
            be = procs.fake("backend")
            rw = procs.fake("rewriter", 0, "--reply", REWRITE)
            al = procs.fake("aligner", 0, "--echo", ALIGNER_ECHO, "--reply", CORRECTION)
            config = gateway_config(backend("llama-3-8b-instruct", be.v1))
            config["helpers"] = {
                "rewriter": {"url": rw.v1, "model": "bpo"},
                "aligner": {"url": al.v1, "model": "aligner", "template": "aligner-v1"},
            }
            config["experiment"] = {"name": "helpers-v1", "arms": {"control": 1, "rewrite+align": 1}}
            gw = procs.gateway(config, tag="shots")
            driver = start_chromium(1400, 900)
            try:
                shoot(driver, gw.url)
            finally:
                driver.quit()
        finally:
            procs.stop_all()
    return 0


def shoot(driver, url: str) -> None:  # type: ignore[no-untyped-def]
    wait = WebDriverWait(driver, 15, poll_frequency=0.05)
    driver.get(f"{url}/ui#playground")
    wait.until(lambda d: d.execute_script("return !document.getElementById('main').hidden"))
    for box in driver.find_elements(By.CSS_SELECTOR, "#arms input"):
        if box.is_selected() != (box.get_attribute("value") in ("control", "rewrite+align")):
            box.click()
    for prompt in ("bread?", "How long should I bake bread?", "how do i bake bread"):
        area = driver.find_element(By.ID, "prompt")
        area.clear()
        area.send_keys(prompt)
        driver.find_element(By.ID, "send").click()
        wait.until(lambda d: d.find_element(By.ID, "send").is_enabled()
                   and len(d.find_elements(By.CSS_SELECTOR, "article.turn.done")) >= 2)
        thumbs = driver.find_elements(By.CSS_SELECTOR, 'article.turn button[aria-label="thumbs up"]')
        for i, button in enumerate(thumbs):
            if i % 3 != 2:
                button.click()
        if prompt != "how do i bake bread":
            driver.find_element(By.ID, "new-conversation").click()
    time.sleep(0.5)
    driver.save_screenshot(str(DOCS / "ui-playground.png"))
    driver.find_element(By.ID, "tab-button-experiment").click()
    wait.until(lambda d: d.find_element(By.ID, "experiment-refresh").is_enabled()
               and d.find_element(By.ID, "experiment-report").text)
    time.sleep(0.3)
    driver.save_screenshot(str(DOCS / "ui-experiment.png"))
    print(f"wrote {DOCS / 'ui-playground.png'} and {DOCS / 'ui-experiment.png'}")


if __name__ == "__main__":
    sys.exit(main())
