"""gateway/report/source.py's pairwise preferences: read with the requests of the selected experiment (forced
arms included whatever ``include_forced`` says), and none from a store older than the ``preferences`` table."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from gateway.report.source import PreferenceRecord, Selection, read
from tests.gateway.report.seed import T0, create_store, insert, pairwise_rows, pref, req


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = create_store(tmp_path_factory.mktemp("source") / "source.db")
    requests, preferences = pairwise_rows()
    insert(url, requests, preferences=preferences)
    return url


def test_preferences_of_the_experiment_with_forced_arms(store: str) -> None:
    snapshot = read(store, Selection(experiment="exp", include_forced=False))
    assert snapshot.requests == ()  # every request of "exp" was forced: left out of the A/B figures
    assert snapshot.forced_excluded == 10
    assert [p.id for p in snapshot.preferences] == ["p1", "p2", "p3", "p4", "p5", "p6", "p7", "p8"]
    assert snapshot.preferences[0] == PreferenceRecord(
        id="p1", time=T0 + 1001, request_a="q1a", request_b="q1b", arm_a="align", arm_b="control", preferred="a",
        left="b", comment="right answer",
    )


def test_preferences_follow_the_experiment_and_since(store: str) -> None:
    other = read(store, Selection(experiment="other"))
    assert [p.id for p in other.preferences] == ["p8", "p9"]  # p8 compares q1a (exp) with o2 (other)
    assert [p.id for p in read(store, Selection()).preferences] == [f"p{i}" for i in range(1, 10)]
    late = read(store, Selection(experiment="exp", since=T0 + 6.5))  # q4a .. q5b
    assert [p.id for p in late.preferences] == ["p6", "p7"]


def test_a_store_without_the_preferences_table_has_none(tmp_path: Path) -> None:
    url = create_store(tmp_path / "old.db")
    insert(url, [req("r1", T0)], preferences=[pref("p1", T0 + 1, "r1", "r2", "a")])
    with sqlite3.connect(tmp_path / "old.db") as conn:
        conn.execute("DROP TABLE preferences")
        conn.execute("DELETE FROM schema_version WHERE version >= 4")
    snapshot = read(url, Selection())
    assert [r.id for r in snapshot.requests] == ["r1"] and snapshot.preferences == ()
