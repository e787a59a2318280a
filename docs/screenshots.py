"""Screenshots of the /ui pages for the README: ``python docs/screenshots.py`` from the repository root.

Starts what the browser tests start (a fake backend, fake rewriter and aligner servers, a gateway with the
trace store in a temporary folder), drives Debian's headless Chromium (``tests/e2e/browser.py``), and writes
``docs/ui-playground.png`` (a prompt through control and rewrite+align: the rewrite and the correction as word
diffs) and ``docs/ui-experiment.png`` (the experiment tab after 60 made-up users' requests, made-up ratings).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import httpx

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
                simulate_traffic(gw.url)
                shoot_experiment(driver)
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


def simulate_traffic(url: str, users: int = 60) -> None:
    """Requests of ``users`` made-up users through the experiment's assignment (the playground forces its arms,
    which the A/B report leaves out), two of three rated 👍 and the rest 👎: made-up ratings, for the picture."""
    with httpx.Client(base_url=url, timeout=30) as client:
        for i in range(users):
            body = {"model": "llama-3-8b-instruct", "messages": [{"role": "user", "content": f"q{i}"}]}
            resp = client.post("/v1/chat/completions", headers={"X-Aligngate-User": f"user-{i}"}, json=body)
            resp.raise_for_status()
            rating = 1 if i % 3 else -1
            client.post("/v1/feedback", json={"request_id": resp.headers["x-request-id"], "rating": rating})
    time.sleep(1.5)  # the store's writer flushes within store.flush_interval_s


def shoot_experiment(driver) -> None:  # type: ignore[no-untyped-def]
    wait = WebDriverWait(driver, 15, poll_frequency=0.05)
    driver.set_window_size(1400, 1500)
    driver.find_element(By.ID, "tab-button-experiment").click()
    driver.find_element(By.ID, "experiment-refresh").click()
    wait.until(lambda d: d.find_element(By.ID, "experiment-refresh").is_enabled()
               and d.find_elements(By.CSS_SELECTOR, "#experiment-arms table"))
    time.sleep(0.3)
    driver.save_screenshot(str(DOCS / "ui-experiment.png"))
    print(f"wrote {DOCS / 'ui-playground.png'} and {DOCS / 'ui-experiment.png'}")


if __name__ == "__main__":
    sys.exit(main())
