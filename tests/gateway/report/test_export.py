"""gateway/report/export.py on a real seeded SQLite trace store (seed.export_rows): exactly the expected rows per
kind, the skip counts per rule, and files that train/data's loaders read. Plus one store written by the real
``Store`` from a request context, as the gateway records it."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.config import StoreSettings
from gateway.context import Capture, RequestContext
from gateway.pipeline.trace import Trace
from gateway.report.export import ExportResult, build_rows, export
from gateway.report.source import Selection, UnknownExperiment
from gateway.store.store import Store
from tests.gateway.report.seed import T0, create_store, export_rows, insert, pairwise_rows
from train.data.loaders import load_any, load_gateway_export


@pytest.fixture(scope="module")
def export_store(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = create_store(tmp_path_factory.mktemp("export") / "export.db")
    requests, feedback = export_rows()
    insert(url, requests, feedback)
    return url


def lines(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def counts(result: ExportResult) -> dict[str, tuple[int, dict[str, int]]]:
    return {rule: (c.written, dict(c.skipped)) for rule, c in result.rules.items()}


def test_preferences(export_store: str, tmp_path: Path) -> None:
    out = tmp_path / "prefs.jsonl"
    result = export(export_store, "preferences", out)
    rows = lines(out)
    assert [(r["request_id"], r["source"]) for r in rows] == [
        ("e13", "correction"),  # the oldest request (experiment "old": every experiment by default)
        ("e1", "correction"),
        ("e2", "upvoted_alignment"),
        ("e9", "correction"),
        ("e10", "upvoted_alignment"),  # forced arms count for training data
        ("e14", "upvoted_alignment"),
    ]
    assert rows[1] == {
        "prompt": [{"role": "user", "content": "What is 2+2?"}],
        "chosen": [{"role": "assistant", "content": "4"}],
        "rejected": [{"role": "assistant", "content": "5"}],
        "request_id": "e1", "source": "correction",
    }
    # rule (b): the aligned answer the user approved beats the raw one; the system message stays in the prompt
    assert rows[2]["prompt"] == [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."}
    ]
    assert (rows[2]["chosen"][0]["content"], rows[2]["rejected"][0]["content"]) == ("Blue.", "Blue, I guess, whatever.")
    # the whole conversation, and the latest non-empty correction (a later blank one does not erase it)
    assert rows[3]["prompt"] == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                                 {"role": "user", "content": "How tall is Everest?"}]
    assert rows[3]["chosen"][0]["content"] == "8,849 metres (29,032 ft)."
    # text parts joined; the original message, never the rewritten prompt
    assert rows[5]["prompt"] == [{"role": "user", "content": "Explain\ngravity"}]
    assert all("Explain gravity to a curious" not in orjson.dumps(r).decode() for r in rows)
    assert counts(result) == {
        "correction": (3, {"no_text": 1, "failed": 1, "identical": 1, "non_text_prompt": 1}),  # e7 e8 e11 e12
        "upvoted_alignment": (3, {"unchanged": 1, "no_text": 1}),  # e3 e7
        "pairwise": (0, {}),  # no preferences in this store
    }
    assert dict(result.not_used) == {"down-rated answers without a correction": 1}  # e4: raw never beats final
    loaded = load_gateway_export(out, "preferences")
    assert len(loaded) == 6 and loaded.n_skipped == 0
    assert loaded[1] == {"prompt": rows[1]["prompt"], "chosen": rows[1]["chosen"], "rejected": rows[1]["rejected"]}
    assert load_any(out).kind == "preferences" and len(load_any(out)) == 6


def test_aligner(export_store: str, tmp_path: Path) -> None:
    out = tmp_path / "aligner.jsonl"
    result = export(export_store, "aligner", out)
    rows = lines(out)
    assert [(r["request_id"], r["source"]) for r in rows] == [
        ("e13", "correction"), ("e1", "correction"), ("e2", "upvoted_alignment"), ("e9", "correction"),
        ("e10", "upvoted_alignment"), ("e14", "upvoted_alignment"),
    ]
    by_id = {r["request_id"]: r for r in rows}
    # (a): the answer shown and the user's correction
    assert by_id["e1"] == {"question": "What is 2+2?", "answer": "5", "correction": "4", "request_id": "e1",
                           "source": "correction"}
    # (b): the raw answer and the aligned one; a system message alone is left out of the question
    assert (by_id["e2"]["question"], by_id["e2"]["answer"], by_id["e2"]["correction"]) == (
        "Name a colour.", "Blue, I guess, whatever.", "Blue.")
    # several turns: models.aligner.question_from_messages's transcript, the last user message last
    assert by_id["e9"]["question"] == "User: hi\nAssistant: hello\nUser: How tall is Everest?"
    assert by_id["e14"]["question"] == "Explain\ngravity"
    assert counts(result) == {
        "correction": (3, {"no_text": 1, "failed": 1, "identical": 1, "non_text_prompt": 1}),
        "upvoted_alignment": (3, {"unchanged": 1, "no_text": 1}),
    }
    loaded = load_gateway_export(out, "aligner")
    assert len(loaded) == 6 and loaded.n_skipped == 0
    assert loaded[1] == {"question": "What is 2+2?", "answer": "5", "correction": "4"}
    assert load_any(out).kind == "aligner"


def test_rewriter(export_store: str, tmp_path: Path) -> None:
    out = tmp_path / "rewriter.jsonl"
    result = export(export_store, "rewriter", out)
    assert lines(out) == [
        {"prompt": "tell me about cats", "optimized_prompt": "Describe the behaviour and care needs of domestic cats.",
         "request_id": "e5", "source": "upvoted_rewrite"},
        {"prompt": "Explain\ngravity",
         "optimized_prompt": "Explain gravity to a curious teenager, with one everyday example.", "request_id": "e14",
         "source": "upvoted_rewrite"},
    ]
    # e6: a guard kept the original; e7: no text (log_bodies off); e11 was rated down
    assert counts(result) == {"upvoted_rewrite": (2, {"not_rewritten": 1, "no_text": 1})}
    assert dict(result.not_used) == {"down-rated rewrites": 1}
    loaded = load_gateway_export(out, "rewriter")
    assert [r["prompt"] for r in loaded] == ["tell me about cats", "Explain\ngravity"]
    assert load_any(out).kind == "rewriter"
    assert "upvoted_rewrite: 2 written; skipped 2 (no_text 1, not_rewritten 1)" in result.summary(out)


def test_experiment_and_since_filters(export_store: str, tmp_path: Path) -> None:
    out = tmp_path / "p.jsonl"
    export(export_store, "preferences", out, Selection(experiment="exp"))
    assert [r["request_id"] for r in lines(out)] == ["e1", "e2", "e9", "e10", "e14"]
    export(export_store, "preferences", out, Selection(since=T0 + 5))
    assert [r["request_id"] for r in lines(out)] == ["e9", "e10", "e14"]
    with pytest.raises(UnknownExperiment):
        export(export_store, "preferences", out, Selection(experiment="missing"))


def test_no_rows_writes_an_empty_file(tmp_path: Path) -> None:
    url = create_store(tmp_path / "empty.db")
    out = tmp_path / "sub" / "out.jsonl"
    result = export(url, "aligner", out)
    assert out.read_bytes() == b"" and result.rows == []
    assert result.summary(out).startswith("exported 0 aligner rows")
    with pytest.raises(ValueError, match="unknown export kind"):
        build_rows("sft", [], {})


def test_export_of_what_the_gateway_itself_recorded(tmp_path: Path) -> None:
    """An aligned request recorded by the real Store from its context, rated up through submit_feedback."""
    settings = StoreSettings(url=f"sqlite:///{tmp_path / 'gw.db'}", spill_path=str(tmp_path / "gw.spill"))
    body = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "Is the sky green?"}]})

    async def record() -> None:
        store = Store(settings)
        await store.start()
        ctx = RequestContext(request_id="rid-1", started=time.perf_counter(), model="m", arm="align")
        trace = Trace(request_id="rid-1", arm="align")
        trace.helper_ms.aligner = 12.5
        ctx.capture = Capture(store, "live", "chat", True, user_key="u1", bucket=3, request_body=body,
                              trace=trace, raw_answer="Yes it is green.", final_answer="No, the sky is blue.")
        store.submit(ctx, 200, 0.2, 0.001)
        store.submit_feedback({"id": "f1", "request_id": "rid-1", "time": time.time() + 1, "rating": 1,
                               "comment": None, "correction": None})
        await store.flush()
        await store.close()

    asyncio.run(record())
    out = tmp_path / "p.jsonl"
    result = export(settings.url, "preferences", out)
    assert counts(result)["upvoted_alignment"] == (1, {})
    assert lines(out) == [{
        "prompt": [{"role": "user", "content": "Is the sky green?"}],
        "chosen": [{"role": "assistant", "content": "No, the sky is blue."}],
        "rejected": [{"role": "assistant", "content": "Yes it is green."}],
        "request_id": "rid-1", "source": "upvoted_alignment",
    }]
    assert len(load_gateway_export(out, "preferences")) == 1


@pytest.fixture(scope="module")
def pairwise_store(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = create_store(tmp_path_factory.mktemp("pairwise") / "pairwise.db")
    requests, preferences = pairwise_rows()
    insert(url, requests, preferences=preferences)
    return url


PARIS = [{"role": "user", "content": "Which is the capital of France?"}]


def test_pairwise_preferences(pairwise_store: str, tmp_path: Path) -> None:
    out = tmp_path / "pairwise.jsonl"
    result = export(pairwise_store, "preferences", out, Selection(experiment="exp"))
    rows = lines(out)
    assert rows == [
        {"prompt": PARIS, "chosen": [{"role": "assistant", "content": "Paris."}],
         "rejected": [{"role": "assistant", "content": "Lyon."}], "request_id": "q1a", "source": "pairwise",
         "rejected_request_id": "q1b", "preference_id": "p1"},
        {"prompt": PARIS, "chosen": [{"role": "assistant", "content": "Paris."}],
         "rejected": [{"role": "assistant", "content": "Lyon."}], "request_id": "q1a", "source": "pairwise",
         "rejected_request_id": "q1b", "preference_id": "p2"},  # b of (q1b, q1a) is q1a
    ]
    # p3 a tie; p4 two prompts; p5 a failed request; p6 one answer twice; p7 no text; p8 o2 is of another
    # experiment (not read); p9 involves none of the experiment's requests (not read at all)
    assert counts(result) == {
        "correction": (0, {}), "upvoted_alignment": (0, {}),
        "pairwise": (2, {"tie": 1, "different_prompts": 1, "failed": 1, "identical": 1, "no_text": 1,
                         "not_selected": 1}),
    }
    assert "pairwise: 2 written; skipped 6" in result.summary(out)
    loaded = load_gateway_export(out, "preferences")
    assert len(loaded) == 2 and loaded.n_skipped == 0
    assert loaded[0] == {"prompt": PARIS, "chosen": rows[0]["chosen"], "rejected": rows[0]["rejected"]}
    assert load_any(out).kind == "preferences"


def test_pairwise_across_every_experiment(pairwise_store: str, tmp_path: Path) -> None:
    out = tmp_path / "all.jsonl"
    result = export(pairwise_store, "preferences", out)
    assert [(r["preference_id"], r["request_id"], r["rejected_request_id"]) for r in lines(out)] == [
        ("p1", "q1a", "q1b"), ("p2", "q1a", "q1b"), ("p8", "q1a", "o2"), ("p9", "o1", "o2")]
    assert counts(result)["pairwise"] == (4, {"tie": 1, "different_prompts": 1, "failed": 1, "identical": 1,
                                              "no_text": 1})


def test_pairwise_rows_of_the_aligner_kind_are_none(pairwise_store: str, tmp_path: Path) -> None:
    result = export(pairwise_store, "aligner", tmp_path / "a.jsonl")
    assert result.rows == [] and "pairwise" not in result.rules
