"""gateway/report/ab.py on a real seeded SQLite trace store: the figures per arm (see seed.ab_rows for the
data), forced arms left out or included, the experiment choice, --since, and the files written."""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path

import pytest

from gateway.report.ab import ABReport, render_markdown, render_table, summarize, write_report
from gateway.report.source import Selection, StoreError, UnknownExperiment, parse_since, read
from tests.gateway.report.seed import T0, ab_rows, create_store, insert, req

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def ab_store(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = create_store(tmp_path_factory.mktemp("ab") / "ab.db")
    requests, feedback = ab_rows()
    insert(url, requests, feedback)
    return url


def report_of(url: str, *, include_forced: bool = False, experiment: str | None = None,
              since: float | None = None) -> ABReport:
    snapshot = read(url, Selection(experiment, since, include_forced), latest_by_default=True)
    return summarize(snapshot, since=since, include_forced=include_forced)


def test_report_figures_per_arm(ab_store: str) -> None:
    report = report_of(ab_store)
    assert report.experiment == "exp"  # the most recent of the two experiments
    assert report.experiments == 2
    assert [a.arm for a in report.arms] == ["control", "rewrite", "align"]
    assert report.forced_excluded == 5

    control = report.arm("control")
    assert control is not None
    assert (control.requests, control.errors) == (11, 1)  # c10: status 502
    assert control.error_rate == pytest.approx(1 / 11)
    # latency of the 10 OK requests 100..1000 ms: p50 = 550, p95 = 900 + 0.55·100 = 955 (the 502 is left out)
    assert (control.latency_p50, control.latency_p95) == (pytest.approx(550.0), pytest.approx(955.0))
    assert control.rewriter_p50 is None and control.aligner_p50 is None
    # 10 rated, latest ratings: 3 up (c00's earlier down and c03's earlier up do not count)
    assert (control.rated, control.up) == (10, 3)
    assert control.up_interval == pytest.approx((0.1077913, 0.6032219), abs=1e-6)  # Wilson 3/10

    align = report.arm("align")
    assert align is not None
    assert (align.requests, align.errors) == (11, 1)  # a10: client_disconnected (status 200)
    # 400..1300 ms: p50 = 850, p95 = 1200 + 0.55·100 = 1255
    assert (align.latency_p50, align.latency_p95) == (pytest.approx(850.0), pytest.approx(1255.0))
    # aligner 5 (a10) and 10, 20, ..., 100 ms: 11 values, the middle one is 50
    assert align.aligner_p50 == pytest.approx(50.0)
    assert (align.rated, align.up) == (10, 8)
    assert align.up_interval == pytest.approx((0.4901625, 0.9433178), abs=1e-6)  # Wilson 8/10

    rewrite = report.arm("rewrite")
    assert rewrite is not None
    assert (rewrite.requests, rewrite.errors, rewrite.rated) == (4, 0, 0)
    assert rewrite.up_interval is None and rewrite.up_rate is None
    assert rewrite.rewriter_p50 == pytest.approx(35.0)  # 20, 30, 40, 50
    assert (rewrite.latency_p50, rewrite.latency_p95) == (pytest.approx(350.0), pytest.approx(485.0))

    comp = report.comparisons["align"]
    # 8/10 vs 3/10 (see test_stats): +0.5, p = 0.0246, Newcombe interval (0.066, 0.740); 4.5 expected downs < 5
    assert comp.test.difference == pytest.approx(0.5)
    assert round(comp.test.p_value, 3) == 0.025
    assert (comp.test.low, comp.test.high) == pytest.approx((0.0664763, 0.7397586), abs=1e-6)
    assert comp.p_holm == comp.test.p_value  # one arm compared with control: Holm changes nothing
    assert comp.rough
    assert "rewrite" not in report.comparisons and "control" not in report.comparisons


def test_forced_rows_are_included_on_request(ab_store: str) -> None:
    report = report_of(ab_store, include_forced=True)
    assert report.forced_excluded == 0
    align = report.arm("align")
    assert align is not None
    # f00..f04 (2000 ms, all rated down) join: 16 requests, 8 up of 15 rated
    assert (align.requests, align.rated, align.up) == (16, 15, 8)
    # 15 OK latencies 400..1300 and 5 of 2000: p50 is the 8th = 1100, p95 at rank 13.3 = 2000
    assert (align.latency_p50, align.latency_p95) == (pytest.approx(1100.0), pytest.approx(2000.0))
    # 8/15 vs 3/10: pooled 11/25 = 0.44; se = sqrt(0.44·0.56·(1/15 + 1/10)) = 0.2026491; z = 0.2333333 / 0.2026491
    # = 1.1514155; p = 2·(1 - Φ(1.1514155)) = 0.2495614
    comp = report.comparisons["align"]
    assert comp.test.difference == pytest.approx(8 / 15 - 0.3)
    assert round(comp.test.p_value, 3) == 0.250
    assert comp.test.z == pytest.approx(1.1514155, abs=1e-6)
    assert "are **included**" in render_markdown(report)


def test_experiment_choice_and_since(ab_store: str) -> None:
    old = report_of(ab_store, experiment="old")
    assert [(a.arm, a.requests, a.rated) for a in old.arms] == [("control", 3, 0)]
    assert old.comparisons == {}
    with pytest.raises(UnknownExperiment, match=r"'nope'.*experiments: exp \(31 requests\), old \(3 requests\)"):
        report_of(ab_store, experiment="nope")
    # from the 21st second on: only a10 (T0 + 20.5), the forced rows (left out) and the rewrite arm remain
    since = report_of(ab_store, since=T0 + 20.2)
    assert [(a.arm, a.requests) for a in since.arms] == [("rewrite", 4), ("align", 1)]
    assert since.since == T0 + 20.2
    assert parse_since("2026-05-01") == T0
    assert parse_since("2026-05-01T02:00:00+02:00") == T0
    assert parse_since("2026-05-01T00:00:20Z") == T0 + 20
    with pytest.raises(ValueError, match="ISO 8601"):
        parse_since("yesterday")


def test_table_and_markdown(ab_store: str) -> None:
    report = report_of(ab_store)
    table = render_table(report)
    lines = table.splitlines()
    assert len(lines) == 2 + 3
    control, align = lines[2], lines[4]
    assert "| control " in control and "550 / 955" in control and "1 (9.1%)" in control
    assert "30.0% (10.8 to 60.3%), 3/10" in control
    assert "850 / 1255" in align and "80.0% (49.0 to 94.3%), 8/10" in align
    assert "+50.0 (+6.6 to +74.0)" in align and "0.025 *" in align
    md = render_markdown(report)
    assert md.startswith("# A/B report: experiment `exp`")
    assert table in md
    assert "**align**: +50.0 points vs control (95% CI +6.6 to +74.0), p = 0.025, significant at the 5% level" in md
    assert "SRM check not run: the configured arm weights are unknown" in md
    assert "**rewrite**: no rated requests yet" in md
    assert "5 forced-arm requests" in md and "--include-forced" in md
    assert "![thumbs-up rate and latency per arm](report.png)" in md


def test_write_report_files(ab_store: str, tmp_path: Path) -> None:
    report = report_of(ab_store)
    files = write_report(report, tmp_path / "out" / "ab")
    assert files.note is None
    assert files.markdown.read_text() == render_markdown(report)
    assert files.png is not None
    data = files.png.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 5000


def test_without_matplotlib_the_markdown_says_so(
    ab_store: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "report.png").write_bytes(b"stale chart of an earlier run")
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib...` now raises ImportError
    files = write_report(report_of(ab_store), tmp_path)
    assert files.png is None and files.note is not None
    assert not (tmp_path / "report.png").exists()
    md = files.markdown.read_text()
    assert "matplotlib is not installed" in md and "](report.png)" not in md
    assert "| align " in md


def test_no_control_arm_and_no_ratings(tmp_path: Path) -> None:
    url = create_store(tmp_path / "s.db")
    insert(url, [req("x1", T0, "align"), req("x2", T0 + 1, "rewrite")])
    report = report_of(url)
    assert report.comparisons == {}
    md = render_markdown(report)
    assert "No `control` arm" in md
    assert "no rated requests yet" in md


def test_store_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no database file at"):
        read(f"sqlite:///{tmp_path / 'missing.db'}", Selection())
    assert not (tmp_path / "missing.db").exists()  # reading never creates a database
    (tmp_path / "junk.db").write_bytes(b"this is not a database at all" * 100)
    with pytest.raises(StoreError, match="cannot read the store"):
        read(f"sqlite:///{tmp_path / 'junk.db'}", Selection())
    sqlite3.connect(tmp_path / "other.db").execute("CREATE TABLE t (x)").connection.close()
    with pytest.raises(StoreError, match="no `requests` table"):
        read(f"sqlite:///{tmp_path / 'other.db'}", Selection())
    with pytest.raises(StoreError, match="only sqlite"):
        read("mysql://localhost/db", Selection())


def test_reading_does_not_write(ab_store: str) -> None:
    path = Path(ab_store.removeprefix("sqlite:///"))
    before = path.stat().st_mtime_ns, path.stat().st_size
    report_of(ab_store)
    assert (path.stat().st_mtime_ns, path.stat().st_size) == before
