"""gateway/eval/shadow.py on a seeded SQLite store: which stored requests become (served, shadow) pairs, read with
the same conversation reader as ``aligngate data export`` (text parts joined, tool calls left out)."""

from __future__ import annotations

from pathlib import Path

from gateway.eval.shadow import read_pairs
from tests.gateway.report.seed import T0, create_store, insert, req, shadow_run, user


def test_pairs_read_text_parts_and_count_what_is_left_out(tmp_path: Path) -> None:
    url = create_store(tmp_path / "store.db")
    text = [{"type": "text", "text": "Is it safe"}, {"type": "text", "text": "to swim?"}]
    parts = [{"role": "user", "content": text}]
    tool = [*user("Weather?"), {"role": "assistant", "content": None, "tool_calls": [{"id": "c1"}]}]
    insert(
        url,
        [
            req("p1", T0 + 1, messages=parts, raw_answer="Yes.", final_answer="Yes."),
            req("p2", T0 + 2, messages=tool, raw_answer="Sunny.", final_answer="Sunny."),
            req("p3", T0 + 3, messages=user("Hi."), raw_answer="Hello.", final_answer="Hello."),
        ],
        shadow_runs=[
            shadow_run("p1", T0 + 10, corrected="Yes, with a lifeguard nearby."),
            shadow_run("p2", T0 + 11, corrected="It is sunny."),
        ],
    )
    pairs = read_pairs(url)
    [prompt] = pairs.prompts
    assert prompt.messages[0].content == "Is it safe\nto swim?"
    assert pairs.answers[("store", prompt.id, "shadow")].text == "Yes, with a lifeguard nearby."
    assert pairs.answers[("store", prompt.id, "served")].text == "Yes."
    assert pairs.skipped == {"non_text_prompt": 1, "no_shadow_run": 1}
