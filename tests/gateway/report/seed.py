"""Seeded trace stores for the report and export tests: a real SQLite file whose schema the real ``Store``
created (so it is whatever the gateway writes today), filled with direct inserts of ``requests``, ``feedback``,
``shadow_runs`` and ``preferences`` rows through the schema's own tables."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from gateway.config import StoreSettings
from gateway.store import schema
from gateway.store.store import Store

#: 2026-05-01 00:00:00 UTC: request i of a seed happens at T0 + i seconds.
T0 = datetime(2026, 5, 1, tzinfo=UTC).timestamp()


def create_store(path: Path) -> str:
    """A fresh trace store at ``path`` created by the gateway's own ``Store`` (schema upgrade included)."""

    async def make() -> None:
        store = Store(StoreSettings(url=f"sqlite:///{path}", spill_path=str(path.parent / "seed.spill")))
        await store.start()
        await store.close()

    asyncio.run(make())
    return f"sqlite:///{path}"


def req(rid: str, t: float, arm: str = "control", **columns: Any) -> dict[str, Any]:
    """A ``requests`` row with plausible defaults (a successful, non-forced chat request without bodies)."""
    row: dict[str, Any] = {
        "id": rid, "time": t, "experiment": "exp", "arm": arm, "arm_forced": False, "user_source": "header",
        "user_key_hash": "0" * 64, "bucket": 1, "model": "m", "endpoint": "chat", "stream": False, "status": 200,
        "outcome": None, "messages": None, "rewritten_prompt": None, "raw_answer": None, "final_answer": None,
        "latency_ms": 100.0, "ttft_ms": 10.0, "overhead_ms": 0.4, "rewriter_ms": None, "aligner_ms": None,
        "prompt_tokens": None, "completion_tokens": None, "rewriter_skipped": None, "aligner_skipped": None,
    }
    row.update(columns)
    return row


def fb(rid: str, t: float, rating: int, correction: str | None = None, comment: str | None = None) -> dict[str, Any]:
    """A ``feedback`` row (its id derives from the request id and the time)."""
    return {"id": f"fb-{rid}-{t}", "request_id": rid, "time": t, "rating": rating, "comment": comment,
            "correction": correction}


def shadow_run(rid: str, t: float, arm: str = "align", **columns: Any) -> dict[str, Any]:
    """A ``shadow_runs`` row of request ``rid`` (a run that happened, with nothing made unless given)."""
    row: dict[str, Any] = {
        "id": rid, "time": t, "experiment": "exp", "arm": arm, "skipped": None, "rewritten_prompt": None,
        "corrected": None, "rewriter_ms": None, "aligner_ms": None, "rewriter_skipped": None,
        "aligner_skipped": None,
    }
    row.update(columns)
    return row


def pref(pid: str, t: float, a: str, b: str, preferred: str, *, arm_a: str = "align", arm_b: str = "control",
         left: str | None = None, comment: str | None = None) -> dict[str, Any]:
    """A ``preferences`` row: requests ``a`` and ``b`` compared, ``preferred`` one of a, b, tie."""
    return {"id": pid, "time": t, "request_a": a, "request_b": b, "arm_a": arm_a, "arm_b": arm_b,
            "preferred": preferred, "left": left, "comment": comment}


def insert(url: str, requests: list[dict[str, Any]], feedback: list[dict[str, Any]] | None = None,
           shadow_runs: list[dict[str, Any]] | None = None, preferences: list[dict[str, Any]] | None = None) -> None:
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            if requests:
                conn.execute(schema.requests.insert(), requests)
            if feedback:
                conn.execute(schema.feedback.insert(), feedback)
            if shadow_runs:
                conn.execute(schema.shadow_runs.insert(), shadow_runs)
            if preferences:
                conn.execute(schema.preferences.insert(), preferences)
    finally:
        engine.dispose()


def ab_rows() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The A/B seed (values the tests check by hand):

    * experiment ``old``: 3 control requests, a day before the rest (the report picks ``exp``, the latest).
    * ``control``: c00..c09 OK, latency 100, 200, ..., 1000 ms; c10 a 502 after 5 ms. Rated: c00..c09, latest
      rating up for c00, c01, c02 (c00 was first rated down), down for c03..c09 (c03 was first rated up) → 3/10.
    * ``align``: a00..a09 OK, latency 400..1300 ms, aligner 10, 20, ..., 100 ms; a10 a client disconnect
      (status 200, outcome client_disconnected). Latest ratings: a00..a07 up, a08, a09 down → 8/10.
    * ``align`` forced (X-Aligngate-Arm): f00..f04, latency 2000 ms, all rated down.
    * ``rewrite``: r00..r03 OK, latency 200..500 ms, rewriter 20, 30, 40, 50 ms; no ratings.
    """
    requests: list[dict[str, Any]] = [req(f"o{i}", T0 - 86_400 + i, experiment="old") for i in range(3)]
    feedback: list[dict[str, Any]] = []
    t = T0
    for i in range(10):
        t += 1
        requests.append(req(f"c{i:02d}", t, latency_ms=100.0 * (i + 1)))
    requests.append(req("c10", t + 0.5, status=502, latency_ms=5.0))
    for i in range(10):
        t += 1
        requests.append(req(f"a{i:02d}", t, "align", latency_ms=100.0 * (i + 4), aligner_ms=10.0 * (i + 1)))
    requests.append(req("a10", t + 0.5, "align", outcome="client_disconnected", latency_ms=50.0, aligner_ms=5.0))
    for i in range(5):
        t += 1
        requests.append(req(f"f{i:02d}", t, "align", arm_forced=True, user_source="header", latency_ms=2000.0))
    for i in range(4):
        t += 1
        requests.append(req(f"r{i:02d}", t, "rewrite", latency_ms=100.0 * (i + 2), rewriter_ms=10.0 * (i + 2)))
    later = T0 + 1000
    for i in range(10):
        feedback.append(fb(f"c{i:02d}", later + i, 1 if i < 3 else -1))
    feedback.append(fb("c00", later - 100, -1))  # an earlier rating: the latest (+1) counts
    feedback.append(fb("c03", later - 100, 1))  # an earlier rating: the latest (-1) counts
    for i in range(10):
        feedback.append(fb(f"a{i:02d}", later + 20 + i, 1 if i < 8 else -1))
    for i in range(5):
        feedback.append(fb(f"f{i:02d}", later + 40 + i, -1))
    return requests, feedback


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def export_rows() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The export seed: one request per situation a rule must handle (e1..e15, in time order; e13 is first, in
    experiment ``old``). See tests/gateway/report/test_export.py for what each must give."""
    t = {f"e{i}": T0 + i for i in range(1, 16)}
    t["e13"] = T0 - 100
    later = T0 + 1000
    requests = [
        req("e13", t["e13"], experiment="old", messages=user("Old question"), raw_answer="old answer",
            final_answer="old answer"),
        req("e1", t["e1"], messages=user("What is 2+2?"), raw_answer="5", final_answer="5"),
        req("e2", t["e2"], "align", messages=[{"role": "system", "content": "Be brief."}, *user("Name a colour.")],
            raw_answer="Blue, I guess, whatever.", final_answer="Blue.", aligner_ms=12.0),
        req("e3", t["e3"], "align", messages=user("Say hi."), raw_answer="Hi!", final_answer="Hi!",
            aligner_ms=9.0, aligner_skipped="empty"),
        req("e4", t["e4"], "align", messages=user("Insult me."), raw_answer="No.", final_answer="I'd rather not.",
            aligner_ms=9.0),
        req("e5", t["e5"], "rewrite", messages=user("tell me about cats"),
            rewritten_prompt="Describe the behaviour and care needs of domestic cats.", raw_answer="Cats purr.",
            final_answer="Cats purr.", rewriter_ms=30.0),
        req("e6", t["e6"], "rewrite", messages=user("tell me about dogs"), rewriter_skipped="too_long_output",
            raw_answer="Dogs bark.", final_answer="Dogs bark.", rewriter_ms=30.0),
        req("e7", t["e7"], "rewrite+align", rewriter_ms=30.0, aligner_ms=12.0),  # log_bodies off: no text
        req("e8", t["e8"], "align", status=502, messages=user("Fail please."), aligner_ms=None),
        req("e9", t["e9"], messages=[*user("hi"), {"role": "assistant", "content": "hello"},
                                     *user("How tall is Everest?")],
            raw_answer="8,849 m", final_answer="8,849 m"),
        req("e10", t["e10"], "align", arm_forced=True, messages=user("Define entropy."),
            raw_answer="Disorder lol.", final_answer="A measure of disorder.", aligner_ms=15.0),
        req("e11", t["e11"], "rewrite+align", messages=user("Hello?"), rewritten_prompt="Greet me warmly.",
            raw_answer="Hey", final_answer="Hello there!", rewriter_ms=30.0, aligner_ms=10.0),
        req("e12", t["e12"], messages=[{"role": "user", "content": [
            {"type": "text", "text": "What is in this picture?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}],
            raw_answer="A cat.", final_answer="A cat."),
        req("e14", t["e14"], "rewrite+align", messages=[{"role": "user", "content": [
            {"type": "text", "text": "Explain"}, {"type": "text", "text": "gravity"}]}],
            rewritten_prompt="Explain gravity to a curious teenager, with one everyday example.",
            raw_answer="Stuff falls.", final_answer="Masses attract each other; that is why things fall.",
            rewriter_ms=30.0, aligner_ms=20.0),
        req("e15", t["e15"], messages=user("No feedback here."), raw_answer="ok", final_answer="ok"),
    ]
    feedback = [
        fb("e13", later, -1, correction="better old answer"),
        fb("e1", later + 1, -1, correction="4"),
        fb("e2", later + 2, 1),
        fb("e3", later + 3, 1),
        fb("e4", later + 4, -1),
        fb("e5", later + 5, 1),
        fb("e6", later + 6, 1),
        fb("e7", later + 7, 1, correction="A better answer."),
        fb("e8", later + 8, -1, correction="Should not fail."),
        fb("e9", later + 9, 1),
        fb("e9", later + 50, 1, correction="8,849 metres (29,032 ft)."),
        fb("e9", later + 60, 1, correction="   "),  # blank: the latest non-empty correction still counts
        fb("e10", later + 10, 1),
        fb("e11", later + 11, -1, correction="Hello there!  "),
        fb("e12", later + 12, -1, correction="A tabby cat."),
        fb("e14", later + 14, 1),
    ]
    return requests, feedback


def pairwise_rows() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The pairwise seed: requests compared two by two (forced arms, as the playground sends them), and one
    preference per situation rule (c) must handle (p1..p9, in time order). See test_export.py."""
    same = user("Which is the capital of France?")
    requests = [
        req("q1a", T0 + 1, "align", arm_forced=True, messages=same, raw_answer="Paris, I think.",
            final_answer="Paris."),
        req("q1b", T0 + 2, "control", arm_forced=True, messages=same, raw_answer="Lyon.", final_answer="Lyon."),
        req("q2a", T0 + 3, "align", arm_forced=True, messages=user("Say yes."), final_answer="Yes."),
        req("q2b", T0 + 4, "control", arm_forced=True, messages=user("Say no."), final_answer="No."),
        req("q3a", T0 + 5, "align", arm_forced=True, messages=same, final_answer="Paris."),
        req("q3b", T0 + 6, "control", arm_forced=True, status=502, messages=same),
        req("q4a", T0 + 7, "align", arm_forced=True, messages=same, final_answer="Paris."),
        req("q4b", T0 + 8, "control", arm_forced=True, messages=same, final_answer=" Paris. "),
        req("q5a", T0 + 9, "align", arm_forced=True),  # log_bodies off: no text
        req("q5b", T0 + 10, "control", arm_forced=True, messages=same, final_answer="Paris."),
        req("o1", T0 + 11, "align", experiment="other", messages=same, final_answer="Paris!"),
        req("o2", T0 + 12, "control", experiment="other", messages=same, final_answer="Marseille."),
    ]
    later = T0 + 1000
    preferences = [
        pref("p1", later + 1, "q1a", "q1b", "a", left="b", comment="right answer"),
        pref("p2", later + 2, "q1b", "q1a", "b", arm_a="control", arm_b="align", left="a"),
        pref("p3", later + 3, "q1a", "q1b", "tie"),
        pref("p4", later + 4, "q2a", "q2b", "a"),  # different prompts
        pref("p5", later + 5, "q3a", "q3b", "a"),  # b failed
        pref("p6", later + 6, "q4a", "q4b", "b"),  # the same answer
        pref("p7", later + 7, "q5a", "q5b", "b"),  # no text
        pref("p8", later + 8, "q1a", "o2", "a"),  # across experiments
        pref("p9", later + 9, "o1", "o2", "a"),  # experiment "other" only
    ]
    return requests, preferences
