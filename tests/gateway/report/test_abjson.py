"""gateway/report/abjson.py: the JSON form of the report is JSON-safe (no NaN or infinity, None for unknown), keeps
the figures of the report, and has the keys its module docstring promises the web page."""

from __future__ import annotations

import json

import pytest

from gateway.report.ab import summary_lines
from gateway.report.abjson import report_json
from gateway.report.abstats import ConfiguredExperiment, summarize
from gateway.report.source import FeedbackSummary, PreferenceRecord, RequestRecord, Snapshot


def _snapshot() -> Snapshot:
    requests = [RequestRecord(f"c{i}", float(i), "exp", "control", False, "chat", 200, None, 100.0)
                for i in range(10)]
    requests += [RequestRecord(f"a{i}", float(i), "exp", "align", False, "chat", 200 if i else 502, None, 150.0,
                               raw_answer="x", final_answer="x" if i % 2 else "y") for i in range(6)]
    requests += [RequestRecord("r0", 3.0, "exp", "rewrite", False, "chat", 200, None, 120.0)]
    feedback = {f"c{i}": FeedbackSummary(1, 1 if i < 3 else -1, None) for i in range(10)}
    feedback |= {f"a{i}": FeedbackSummary(1, 1 if i < 5 else -1, None) for i in range(6)}
    prefs = (PreferenceRecord("p", 1.0, "a1", "c1", "align", "control", "a", "a"),)
    return Snapshot("sqlite:///t.db", "exp", (), tuple(requests), feedback, preferences=prefs)


def test_json_is_safe_and_complete() -> None:
    # rewrite has requests but weight 0: χ² is infinite, which JSON cannot carry → statistic None
    report = summarize(_snapshot(), configured=ConfiguredExperiment("exp", {"control": 1, "align": 1}))
    data = report_json(report)
    text = json.dumps(data, allow_nan=False)  # raises on NaN or infinity
    assert json.loads(text) == data
    assert set(data) == {
        "version", "experiment", "store", "experiments", "since", "first", "last", "include_forced",
        "forced_excluded", "confidence", "alpha", "planned_n", "control", "arms", "srm", "pairwise",
        "position_bias", "summary",
    }
    assert (data["version"], data["experiment"], data["control"], data["alpha"]) == (1, "exp", "control", 0.05)
    assert data["srm"]["status"] == "mismatch" and data["srm"]["statistic"] is None and data["srm"]["p_value"] == 0
    assert [a["arm"] for a in data["srm"]["arms"]] == ["control", "rewrite", "align"]
    assert data["summary"] == summary_lines(report)

    control, rewrite, align = data["arms"]
    assert control["vs_control"] is None and control["aligner_changed"] is None and not control["aligns"]
    assert control["refusals"] is None  # no answer texts: unknown, not 0
    assert control["thumbs_up"] == {"count": 3, "n": 10, "rate": 0.3, "low": pytest.approx(0.1077913, abs=1e-6),
                                    "high": pytest.approx(0.6032219, abs=1e-6)}
    assert rewrite["thumbs_up"] is None and rewrite["vs_control"]["thumbs_up"] is None
    assert rewrite["vs_control"]["errors"]["difference"] == -0.0
    # align: 5 of 6 rated up; one 502 of 6; the aligner changed a2, a4 of the 5 answers
    assert align["aligner_changed"]["count"] == 2 and align["aligner_changed"]["n"] == 5
    assert align["error_rate"]["count"] == 1 and align["error_rate"]["n"] == 6
    up = align["vs_control"]["thumbs_up"]
    comp = report.comparisons["align"]
    assert up["difference"] == pytest.approx(5 / 6 - 0.3)
    assert (up["low"], up["high"], up["p_value"], up["p_holm"]) == (
        comp.test.low, comp.test.high, comp.test.p_value, comp.p_holm)
    assert up["significant"] is (comp.p_holm < 0.05)
    assert set(up["always_valid"]) == {"low", "high", "p_value"}
    assert up["always_valid"]["low"] <= up["low"]
    assert align["vs_control"]["latency_p50_delta_ms"] == 50.0
    assert [(p["arm"], p["baseline"], p["wins"], p["n"]) for p in data["pairwise"]] == [
        ("rewrite", "control", 0, 0), ("align", "control", 1, 1)]
    assert data["pairwise"][0]["win_rate"] is None
    assert data["position_bias"]["left"]["count"] == 1


def test_json_without_weights_or_control() -> None:
    snap = _snapshot()
    no_control = Snapshot(snap.url, snap.experiment, (), tuple(r for r in snap.requests if r.arm != "control"),
                          snap.feedback)
    data = report_json(summarize(no_control))
    json.dumps(data, allow_nan=False)
    assert data["control"] is None and all(a["vs_control"] is None for a in data["arms"])
    assert data["srm"] == {"status": "not_run", "reason": data["srm"]["reason"], "threshold": 0.001,
                           "statistic": None, "df": None, "p_value": None, "arms": []}
    assert "unknown" in data["srm"]["reason"]
    assert data["pairwise"] == [] and data["position_bias"] is None
