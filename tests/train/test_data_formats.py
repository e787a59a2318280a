"""train.data.formats: JSON/JSONL reading and writing, errors naming file and line, conversation rendering."""

from __future__ import annotations

import json
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from train.data.formats import (
    DataFormatError,
    Message,
    completion_text,
    iter_json_records,
    read_jsonl,
    render_conversation,
    write_jsonl,
)


def test_write_then_read_round_trip_keeps_unicode(tmp_path: Path) -> None:
    rows: list[dict[str, object]] = [
        {"prompt": "héllo ✓ 日本語", "completion": [{"role": "assistant", "content": "🌍"}]},
        {"a": 1},
    ]
    out = tmp_path / "sub" / "rows.jsonl"
    assert write_jsonl(out, rows) == 2
    assert read_jsonl(out) == rows
    text = out.read_text(encoding="utf-8")
    assert "日本語" in text and text.endswith("\n") and text.count("\n") == 2
    assert stat.S_IMODE(out.stat().st_mode) == 0o644
    assert [p.name for p in out.parent.iterdir()] == ["rows.jsonl"]  # no temporary file left behind


def test_write_failure_leaves_no_partial_file(tmp_path: Path) -> None:
    out = tmp_path / "rows.jsonl"

    def rows() -> Iterator[dict[str, int]]:
        yield {"ok": 1}
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        write_jsonl(out, rows())
    assert list(tmp_path.iterdir()) == []


def test_jsonl_blank_lines_are_ignored_and_locations_are_line_numbers(tmp_path: Path) -> None:
    f = tmp_path / "x.jsonl"
    f.write_text('{"a": 1}\n\n   \n{"a": 2}\n', encoding="utf-8")
    assert [(where, obj) for where, obj in iter_json_records(f)] == [("line 1", {"a": 1}), ("line 4", {"a": 2})]


def test_json_array_is_sniffed_and_locations_are_items(tmp_path: Path) -> None:
    f = tmp_path / "x.json"
    f.write_text('\n  [{"a": 1}, {"a": 2}]', encoding="utf-8")
    assert [where for where, _ in iter_json_records(f)] == ["item 1", "item 2"]


def test_invalid_json_line_names_file_and_line(tmp_path: Path) -> None:
    f = tmp_path / "bad.jsonl"
    f.write_text('{"a": 1}\n{"a": 2}\n{"a": \n', encoding="utf-8")
    with pytest.raises(DataFormatError) as info:
        read_jsonl(f)
    assert str(info.value).startswith(f"{f}:line 3: invalid JSON")


def test_non_object_rows_are_errors(tmp_path: Path) -> None:
    f = tmp_path / "bad.jsonl"
    f.write_text('{"a": 1}\n[1, 2]\n', encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"bad\.jsonl:line 2: expected a JSON object, got list"):
        read_jsonl(f)
    g = tmp_path / "bad.json"
    g.write_text('[{"a": 1}, "x"]', encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"bad\.json:item 2: expected a JSON object, got str"):
        read_jsonl(g)


def test_broken_json_array_names_the_line(tmp_path: Path) -> None:
    f = tmp_path / "bad.json"
    f.write_text('[\n  {"a": 1},\n  {"a": }\n]', encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"bad\.json:line 3: invalid JSON"):
        read_jsonl(f)


def test_utf8_bom_is_accepted(tmp_path: Path) -> None:
    f = tmp_path / "bom.jsonl"
    f.write_bytes("\ufeff".encode() + json.dumps({"a": "b"}).encode() + b"\n")
    assert read_jsonl(f) == [{"a": "b"}]


def test_render_conversation() -> None:
    assert render_conversation("plain text") == "plain text"
    assert render_conversation([{"role": "user", "content": "Only me"}]) == "Only me"
    convo: list[Message] = [
        {"role": "system", "content": "Be kind."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Bye"},
    ]
    assert render_conversation(convo) == "System: Be kind.\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Bye"
    assert render_conversation([{"role": "tool", "content": "42"}]) == "Tool: 42"


def test_completion_text() -> None:
    assert completion_text("x") == "x"
    assert completion_text([{"role": "assistant", "content": "a"}, {"role": "assistant", "content": "b"}]) == "a\n\nb"
