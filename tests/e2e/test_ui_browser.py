"""The /ui pages in a real headless Chromium, against a real gateway (trace store on SQLite, rewriter and
aligner played by fake servers) and a fake OpenAI upstream, all separate processes.

One browser session for the module (the tests run in order and share the page): a wrong API key is refused,
the right one opens the page; a prompt streams through control and align side by side, the align pane shows the
backend's answer against the correction as a word diff; 👍 lands in the store's ``feedback`` table and a
pairwise choice in ``preferences``; model text with markup shows as text and runs nothing; a failing helper and a
gateway killed mid-stream show as errors in their own pane; the page never trips its Content-Security-Policy.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from tests.e2e.browser import browser_missing, start_chromium
from tests.e2e.support import Fake, Gateway, Procs, backend, gateway_config, wait_for
from tests.system import missing

KEY = "sk-ui-browser-test"
MODEL = "m"
REWRITE = "Explain step by step how to bake a simple loaf of bread at home, with safe oven temperatures."
SAFE = "Please stay safe."
# the aligner repeats the answer it was asked about (aligner-v1: "... {question} | {answer} ASSISTANT:") and adds
# a sentence: the correction is the answer plus SAFE, a small word diff
ALIGNER_ECHO = r"^.*\| (.*) ASSISTANT:"
FAIL = "FAILME"
WAIT_S = 10.0


def hello(said: str) -> str:
    return f"Hello from backend! You said: {said}"


@dataclass
class UiStack:
    backend: Fake
    gw: Gateway  # api_keys, both helpers (on_error: fail), the trace store
    slow: Gateway  # no keys, a backend streaming a word every 0.2 s: killed mid-stream
    shared: dict[str, Any] = field(default_factory=dict)  # what one test leaves the next


@pytest.fixture(scope="module")
def ui(module_procs: Procs) -> UiStack:
    why = browser_missing()
    if why is not None:
        missing(why)
    be = module_procs.fake("backend")
    rw = module_procs.fake("rewriter", 0, "--reply", REWRITE)
    al = module_procs.fake("aligner", 0, "--echo", ALIGNER_ECHO, "--reply", "{echo} " + SAFE, "--fail-if", FAIL)
    slow_be = module_procs.fake("slow-backend", 0, "--token-delay-s", "0.2")
    config = gateway_config(backend(MODEL, be.v1), api_keys=[KEY])
    config["helpers"] = {
        "rewriter": {"url": rw.v1, "model": "bpo", "on_error": "fail", "timeout_s": 10},
        "aligner": {"url": al.v1, "model": "aligner", "template": "aligner-v1", "on_error": "fail", "timeout_s": 10},
    }
    config["experiment"] = {"arms": {"control": 1}, "allow_override": True}
    gw = module_procs.gateway(config, tag="ui")
    slow = module_procs.gateway(gateway_config(backend(MODEL, slow_be.v1)), tag="ui-slow")
    return UiStack(be, gw, slow)


@pytest.fixture(scope="module")
def driver(ui: UiStack) -> Iterator[Any]:
    d = start_chromium()
    try:
        yield d
    finally:
        d.quit()


# --------------------------------------------------------------------------------------------- helpers


def until(driver: Any, predicate: Any, what: str, timeout: float = WAIT_S) -> Any:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    # a re-render may replace an element between finding it and reading it: ask again
    wait = WebDriverWait(driver, timeout, poll_frequency=0.05, ignored_exceptions=(StaleElementReferenceException,))
    return wait.until(lambda d: predicate(d), message=what)


def by_css(root: Any, css: str) -> Any:
    from selenium.webdriver.common.by import By

    return root.find_element(By.CSS_SELECTOR, css)


def all_css(root: Any, css: str) -> list[Any]:
    from selenium.webdriver.common.by import By

    return list(root.find_elements(By.CSS_SELECTOR, css))


def visible(driver: Any, element_id: str) -> bool:
    return bool(driver.execute_script(f"return !document.getElementById('{element_id}').hidden"))


def choose_arms(driver: Any, arms: set[str]) -> None:
    by_css(driver, "#new-conversation").click()
    for box in sorted(all_css(driver, "#arms input[type=checkbox]"), key=lambda b: b.get_attribute("value") in arms):
        if box.is_selected() != (box.get_attribute("value") in arms):
            box.click()  # unchecking first: at most four may be checked
    assert {b.get_attribute("value") for b in all_css(driver, "#arms input:checked")} == arms


def send(driver: Any, prompt: str) -> None:
    area = by_css(driver, "#prompt")
    area.clear()
    area.send_keys(prompt)
    by_css(driver, "#send").click()


def pane(driver: Any, arm: str) -> Any:
    return by_css(driver, f'section.pane[data-arm="{arm}"]')


def last_turn(driver: Any, arm: str) -> Any:
    return all_css(pane(driver, arm), "article.turn")[-1]


def finished(driver: Any, arms: list[str]) -> list[Any]:
    """The last turn of each arm once every one is done or failed."""
    def ready(d: Any) -> list[Any] | None:
        turns = [last_turn(d, arm) for arm in arms]
        classes = [t.get_attribute("class") for t in turns]
        return turns if all("done" in c or "failed" in c for c in classes) else None

    turns: list[Any] = until(driver, ready, f"the turns of {arms} to finish")
    return turns


def rows(db: str, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db) as conn:
        return list(conn.execute(sql, args))


def has_table(db: str, name: str) -> bool:
    return bool(rows(db, "SELECT name FROM sqlite_master WHERE type = 'table' AND name = ?", name))


# --------------------------------------------------------------------------------------------- tests


def test_a_wrong_key_is_refused_and_the_right_one_opens_the_page(ui: UiStack, driver: Any) -> None:
    driver.get(f"{ui.gw.url}/ui")
    until(driver, lambda d: visible(d, "auth"), "the API key form")
    assert not visible(driver, "main")
    by_css(driver, "#api-key").send_keys("sk-wrong")
    by_css(driver, "#api-key-submit").click()
    message = until(driver, lambda d: visible(d, "auth-message") and by_css(d, "#auth-message").text, "a refusal")
    assert "The API key was refused" in message
    assert driver.execute_script("return sessionStorage.getItem('aligngate.apiKey')") is None

    by_css(driver, "#api-key").send_keys(KEY)
    by_css(driver, "#api-key-submit").click()
    until(driver, lambda d: visible(d, "main"), "the page after the key")
    assert not visible(driver, "auth")
    assert driver.execute_script("return sessionStorage.getItem('aligngate.apiKey')") == KEY
    assert driver.execute_script("return localStorage.length") == 0
    assert driver.get_cookies() == []
    assert KEY not in driver.current_url
    assert [o.get_attribute("value") for o in all_css(driver, "#model option")] == [MODEL]
    arms = {b.get_attribute("value") for b in all_css(driver, "#arms input")}
    assert {"control", "rewrite", "align", "rewrite+align"} <= arms


def test_two_arms_stream_side_by_side_with_the_correction_diff_and_feedback(ui: UiStack, driver: Any) -> None:
    prompt = "How do I bake bread? héllo ✓ 🌍 日本語"
    choose_arms(driver, {"control", "align"})
    send(driver, prompt)
    control, align = finished(driver, ["control", "align"])
    assert "done" in control.get_attribute("class"), control.text
    assert "done" in align.get_attribute("class"), align.text
    answer = hello(prompt)
    assert by_css(control, ".answer").text == answer  # the UTF-8 of every streamed piece intact
    assert by_css(align, ".answer").text == f"{answer} {SAFE}"
    # the align pane: the backend's answer against the correction, the added words in <ins>
    diff = by_css(align, ".correction .diff")
    assert [i.get_attribute("textContent") for i in all_css(diff, "ins")] == [SAFE]
    assert all_css(diff, "del") == []
    assert all_css(control, ".correction") == []  # control has no aligner
    control_id = control.get_attribute("data-request-id")
    align_id = align.get_attribute("data-request-id")
    assert control_id and align_id and control_id != align_id
    assert align_id in align.text and "aligner" in by_css(align, ".facts").text
    db = str(ui.gw.db_path)
    for arm, rid in (("control", control_id), ("align", align_id)):
        stored = wait_for(lambda rid=rid: rows(db, "SELECT arm, arm_forced FROM requests WHERE id = ?", rid),
                          what=f"the {arm} request row")
        assert stored == [(arm, 1)]

    by_css(control, 'button[aria-label="thumbs up"]').click()
    until(driver, lambda d: "Recorded" in by_css(control, ".feedback-message").text, "the 👍 to be recorded: "
          + by_css(control, ".feedback").text)
    stored = wait_for(lambda: rows(db, "SELECT rating FROM feedback WHERE request_id = ?", control_id),
                      what="the feedback row")
    assert stored == [(1,)]
    ui.shared.update(control=control_id, align=align_id)


def test_the_pairwise_choice_is_stored(ui: UiStack, driver: Any) -> None:
    control_id, align_id = ui.shared["control"], ui.shared["align"]
    until(driver, lambda d: visible(d, "compare"), "the comparison")
    left = by_css(driver, "#compare-left")
    right = by_css(driver, "#compare-right")
    assert {left.get_attribute("data-request-id"), right.get_attribute("data-request-id")} == {control_id, align_id}
    assert "control" not in left.text and "align" not in left.text  # blind until chosen
    left_is_a = left.get_attribute("data-request-id") == control_id  # a: control (the first arm), b: align
    by_css(driver, "#prefer-left").click()
    message = until(driver, lambda d: by_css(d, "#compare-message").text not in ("", "sending…")
                    and by_css(d, "#compare-message").text, "the answer to the choice")
    assert wait_for(lambda: ui.gw.log_lines("/v1/preferences"), what="POST /v1/preferences in the access log")
    db = str(ui.gw.db_path)
    assert "Recorded" in message and "Left was" in message
    stored = wait_for(lambda: rows(db, 'SELECT request_a, request_b, preferred, "left" FROM preferences'),
                      what="the preference row")
    assert stored == [(control_id, align_id, "a" if left_is_a else "b", "a" if left_is_a else "b")]


def test_markup_in_an_answer_is_shown_as_text_and_runs_nothing(ui: UiStack, driver: Any) -> None:
    hostile = '<script>window.__xss = 1</script><img src=x onerror="window.__xss = 2"> <b>bold</b>'
    choose_arms(driver, {"control", "align"})
    send(driver, hostile)
    control, align = finished(driver, ["control", "align"])
    assert by_css(control, ".answer").text == hello(hostile)
    assert by_css(control, ".user .text").text == hostile
    assert by_css(align, ".answer").text == f"{hello(hostile)} {SAFE}"
    time.sleep(0.2)  # an injected image's onerror would have fired by now
    assert driver.execute_script("return window.__xss") is None
    assert all_css(driver, "#panes script, #panes img, #panes b, #compare img, #compare script") == []
    assert hostile in by_css(driver, "#compare-left").text or hostile in by_css(driver, "#compare-right").text


def test_a_failing_helper_shows_in_its_own_pane(ui: UiStack, driver: Any) -> None:
    choose_arms(driver, {"control", "align"})
    send(driver, f"Please {FAIL} now")
    control, align = finished(driver, ["control", "align"])
    assert "done" in control.get_attribute("class")
    assert "failed" in align.get_attribute("class")
    error = by_css(align, ".turn-error").text
    assert "aligner failed" in error.lower(), error
    assert by_css(align, ".spinner").get_attribute("hidden") is not None
    assert by_css(driver, "#send").is_enabled()
    assert not visible(driver, "compare")  # one answer: nothing to compare


def test_the_experiment_and_traces_tabs(ui: UiStack, driver: Any) -> None:
    auth = {"Authorization": f"Bearer {KEY}"}
    # the playground forces its arms, which the A/B report leaves out: one request the experiment assigned
    assigned = httpx.post(f"{ui.gw.v1}/chat/completions", headers=auth, timeout=30,
                          json={"model": MODEL, "messages": [{"role": "user", "content": "assigned"}]})
    assert assigned.status_code == 200, assigned.text

    def reported() -> bool:
        answer = httpx.get(f"{ui.gw.url}/ui/api/experiment", headers=auth, timeout=10).json()
        return answer["report"] is not None

    wait_for(reported, what="the assigned request in the report")
    by_css(driver, "#tab-button-experiment").click()
    until(driver, lambda d: visible(d, "tab-experiment") and not visible(d, "tab-playground"), "the experiment tab")
    until(driver, lambda d: by_css(d, "#experiment-refresh").is_enabled(), "the first load")
    by_css(driver, "#experiment-refresh").click()
    until(driver, lambda d: by_css(d, "#experiment-refresh").is_enabled(), "the refresh")
    until(driver, lambda d: "control" in by_css(d, "#experiment-arms table").text, "the arms table")
    srm = until(driver, lambda d: by_css(d, "#experiment-srm").text, "the sample-ratio section")
    assert "Sample-ratio check: not run: a single arm is configured" in srm and "control 1 100.0% 100.0%" in srm
    assert all_css(driver, "#experiment-guardrails table")

    by_css(driver, "#tab-button-traces").click()
    until(driver, lambda d: visible(d, "tab-traces"), "the traces tab")
    row = until(driver, lambda d: all_css(d, f'#traces-list tr[data-id="{ui.shared["control"]}"]'), "the row")[0]
    row.click()
    until(driver, lambda d: ui.shared["control"] in by_css(d, "#trace-detail").text, "the trace")
    by_css(driver, "#tab-button-playground").click()
    assert driver.current_url.endswith("#playground")


def test_the_word_diff(ui: UiStack, driver: Any) -> None:
    script = """
        const done = arguments[arguments.length - 1];
        import("/ui/diff.js").then((m) => done(arguments[0].map(([a, b]) => m.diffWords(a, b))),
                                   (e) => done(String(e)));
    """
    cases = [
        ["the cat sat", "the dog sat"],
        ["a b c", "a b c"],
        ["", "new words"],
        ["keep this, drop that", "keep this"],
        ["x  y", "x y"],
        ["Hello, world!", "Hello world!"],
        ["日本語 ✓", "日本語 ✓ 🌍"],
        ["how do i bake bread", "Explain how to bake a loaf of bread."],
    ]
    got = driver.execute_async_script(script, cases)
    assert got == [
        [{"op": "eq", "text": "the "}, {"op": "del", "text": "cat"}, {"op": "ins", "text": "dog"},
         {"op": "eq", "text": " sat"}],
        [{"op": "eq", "text": "a b c"}],
        [{"op": "ins", "text": "new words"}],
        [{"op": "eq", "text": "keep this"}, {"op": "del", "text": ", drop that"}],
        [{"op": "eq", "text": "x y"}],  # whitespace is not compared
        [{"op": "eq", "text": "Hello"}, {"op": "del", "text": ","}, {"op": "eq", "text": " world!"}],
        [{"op": "eq", "text": "日本語 ✓ "}, {"op": "ins", "text": "🌍"}],
        [{"op": "ins", "text": "Explain"}, {"op": "eq", "text": " how "}, {"op": "del", "text": "do i"},
         {"op": "ins", "text": "to"}, {"op": "eq", "text": " bake "}, {"op": "ins", "text": "a loaf of"},
         {"op": "eq", "text": " bread"}, {"op": "ins", "text": "."}],
    ]
    for (_, after), ops in zip(cases, got, strict=True):  # what is not deleted is the new text, exactly
        assert "".join(op["text"] for op in ops if op["op"] != "del") == after


def test_reports_and_traces_of_any_shape_render_as_text(ui: UiStack, driver: Any) -> None:
    """The experiment and trace renderers on made-up answers of the JSON API (keys missing, extra sections,
    intervals, markup in the data): what the page shows once /ui/api is there, whatever its exact shape."""
    script = """
        const done = arguments[arguments.length - 1];
        Promise.all([import("/ui/experiment.js"), import("/ui/traces.js")]).then(([e, t]) => {
          const box = document.createElement("div");
          box.id = "render-check";
          box.append(...e.render(arguments[0]), ...t.story(arguments[1]));
          document.body.append(box);
          done(box.innerText);
        }, (err) => done("ERROR " + err));
    """
    hostile = '<img src=x onerror="window.__xss = 3">'
    report = {
        "experiment": "exp-1",
        "arms": [
            {"arm": "control", "requests": 120, "error_rate": 0.0083, "thumbs_up_rate": {"value": 0.61, "low": 0.5,
                                                                                         "high": 0.71}},
            {"arm": "align", "requests": 118, "p_holm": 0.0312, "diff_vs_control": {"estimate": 0.08, "low": -0.02,
                                                                                     "high": 0.18}},
        ],
        "srm": {"p": 0.74, "ok": True},
        "pairwise": [{"a": "align", "b": "control", "win_rate": 0.58, "n": 40}],
        "notes": [hostile],
    }
    trace = {
        "request": {"id": "req-1", "arm": "align", "messages": [{"role": "user", "content": hostile}],
                    "raw_answer": "It is fine.", "final_answer": "It is fine, with care.", "latency_ms": 12.5},
        "feedback": [{"rating": 1, "comment": hostile}],
        "shadow": None,
        "preferences": [],
    }
    text = driver.execute_async_script(script, report, trace)
    assert not text.startswith("ERROR"), text
    for expected in ("exp-1", "control", "align", "0.61 [0.5, 0.71]", "0.08 [-0.02, 0.18]", "0.0312", "Srm",
                     "Pairwise", "0.58", "req-1", "with care", "12.5"):
        assert expected in text, (expected, text)
    assert text.count(hostile) == 3  # the report's note, the message, the feedback comment: as text
    assert all_css(driver, "#render-check img") == []
    assert all_css(driver, "#render-check .diff ins")[0].text == ", with care"
    assert driver.execute_script("return window.__xss") is None
    driver.execute_script("document.getElementById('render-check').remove()")


def test_the_page_never_trips_its_content_security_policy(ui: UiStack, driver: Any) -> None:
    logs = driver.get_log("browser")
    violations = [e["message"] for e in logs
                  if "Content Security Policy" in e["message"] or "Refused to" in e["message"]]
    assert violations == []
    errors = [e["message"] for e in logs if e["level"] == "SEVERE" and "/v1/" not in e["message"]
              and "/ui/api/" not in e["message"]]  # refused keys, 404s of the API not built yet, the failing helper
    assert errors == []
    # and the policy is enforced: an inline script put into the page does not run, and says so
    driver.execute_script("const s = document.createElement('script'); s.textContent = 'window.__inline = 1';"
                          "document.head.append(s);")
    assert driver.execute_script("return window.__inline") is None
    assert [e for e in driver.get_log("browser") if "Content Security Policy" in e["message"]]


def test_a_gateway_killed_mid_stream_shows_an_error_in_the_pane(ui: UiStack, driver: Any) -> None:
    driver.get(f"{ui.slow.url}/ui#playground")  # another origin: no key needed there
    until(driver, lambda d: visible(d, "main"), "the page of the slow gateway")
    choose_arms(driver, {"control"})
    send(driver, " ".join(f"word{i}" for i in range(60)))  # ~66 words at 0.2 s each
    until(driver, lambda d: by_css(last_turn(d, "control"), ".answer").text.startswith("Hello"), "the first words")
    ui.slow.kill()
    killed = time.monotonic()
    turn = until(driver, lambda d: "failed" in last_turn(d, "control").get_attribute("class")
                 and last_turn(d, "control"), "an error in the pane", timeout=5.0)
    assert time.monotonic() - killed < 5.0
    error = by_css(turn, ".turn-error").text
    assert "connection to the gateway was lost" in error or "ended before the answer was complete" in error, error
    assert by_css(turn, ".spinner").get_attribute("hidden") is not None
    assert by_css(turn, ".answer").text.startswith("Hello")  # what had arrived stays
    assert by_css(driver, "#send").is_enabled()
