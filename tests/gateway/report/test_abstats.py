"""gateway/report/abstats.py on Snapshots built in the test: small counts (Newcombe instead of a zero-width Wald
interval), Holm across arms, guardrails, the SRM check, pairwise preferences and position bias — each figure
checked against a hand computation."""

from __future__ import annotations

import pytest

from core.stats import two_proportion_test
from gateway.report.ab import render_guardrails, render_markdown, render_pairwise, summary_lines
from gateway.report.abstats import ConfiguredExperiment, pairwise, position_bias, srm_check, summarize
from gateway.report.source import FeedbackSummary, PreferenceRecord, RequestRecord, Snapshot


def rec(rid: str, arm: str, *, t: float = 0.0, status: int = 200, forced: bool = False, raw: str | None = None,
        final: str | None = None, latency_ms: float = 100.0) -> RequestRecord:
    return RequestRecord(rid, t, "exp", arm, forced, "chat", status, None, latency_ms, raw_answer=raw,
                         final_answer=final)


def rated(arm: str, up: int, n: int, prefix: str = "") -> tuple[list[RequestRecord], dict[str, FeedbackSummary]]:
    """``n`` rated requests of ``arm``, the first ``up`` of them thumbs-up."""
    recs = [rec(f"{prefix}{arm}{i}", arm, t=float(i)) for i in range(n)]
    return recs, {r.id: FeedbackSummary(1, 1 if i < up else -1, None) for i, r in enumerate(recs)}


def snapshot(*arms: tuple[str, int, int], preferences: tuple[PreferenceRecord, ...] = ()) -> Snapshot:
    requests: list[RequestRecord] = []
    feedback: dict[str, FeedbackSummary] = {}
    for arm, up, n in arms:
        recs, fb = rated(arm, up, n)
        requests += recs
        feedback |= fb
    return Snapshot("sqlite:///t.db", "exp", (), tuple(requests), feedback, preferences=preferences)


def pref(a: str, b: str, preferred: str, left: str | None = None) -> PreferenceRecord:
    return PreferenceRecord(f"p-{a}-{b}-{preferred}", 0.0, "ra", "rb", a, b, preferred, left)


def test_one_of_one_against_none_of_one_is_not_a_certainty() -> None:
    # the case: the Wald interval was +100 to +100 beside p = 0.157; Newcombe's is -12.2 to +100
    report = summarize(snapshot(("control", 0, 1), ("align", 1, 1)))
    comp = report.comparisons["align"]
    assert comp.test.difference == 1.0
    assert comp.test.p_value == pytest.approx(0.1572992, abs=1e-6)
    assert (comp.test.low, comp.test.high) == pytest.approx((-0.1221087, 1.0), abs=1e-6)
    seq = comp.always_valid
    assert seq is not None and seq.low <= comp.test.low and seq.p_value >= comp.test.p_value
    line = next(x for x in summary_lines(report) if x.startswith("**align**"))
    assert "+100.0 points vs control (95% CI -12.2 to +100.0), p = 0.157, not significant" in line
    assert "few ratings" in line


def test_holm_across_arms_compared_with_control() -> None:
    # align 45/100 and rewrite 40/100 against control 30/100: raw p 0.0284597 and 0.1382077 (see test_stats);
    # Holm: 2·0.0284597 = 0.0569194, max(0.0569194, 0.1382077) = 0.1382077 → nothing significant after correction
    report = summarize(snapshot(("control", 30, 100), ("rewrite", 40, 100), ("align", 45, 100)))
    align, rewrite = report.comparisons["align"], report.comparisons["rewrite"]
    assert align.test.p_value == pytest.approx(0.0284597, abs=1e-6)
    assert align.p_holm == pytest.approx(0.0569194, abs=1e-6)
    assert rewrite.p_holm == pytest.approx(0.1382077, abs=1e-6) == rewrite.test.p_value
    lines = summary_lines(report)
    assert any(x.startswith("**align**") and "p = 0.028, not significant after Holm correction (Holm p = 0.057)"
               in x for x in lines)
    table = render_markdown(report)
    assert "| 0.028 |    0.057 |" in table


def test_guardrails_errors_refusals_aligner_changes() -> None:
    sorry = "I'm sorry, but I can't help with that."
    control = [rec(f"c{i}", "control", raw="ok", final=sorry if i < 1 else "ok", latency_ms=100.0 + i)
               for i in range(10)]
    control += [rec("c-err", "control", status=502)]
    # align: 3 of 4 answers changed by the aligner, 3 refusals; 2 errors of 6 requests
    align = [rec("a0", "align", raw="x", final=sorry, latency_ms=300.0),
             rec("a1", "align", raw="y", final=sorry, latency_ms=300.0),
             rec("a2", "align", raw="z", final="I am unable to help with that.", latency_ms=300.0),
             rec("a3", "align", raw="same", final="same", latency_ms=300.0),
             rec("a4", "align", status=500), rec("a5", "align", status=503)]
    rewrite = [rec(f"r{i}", "rewrite", latency_ms=200.0) for i in range(3)]  # no bodies kept
    report = summarize(Snapshot("sqlite:///t.db", "exp", (), tuple(control + align + rewrite), {}))
    a = report.arm("align")
    assert a is not None and a.aligns
    assert a.changed is not None and (a.changed.count, a.changed.n) == (3, 4)
    assert a.refusals is not None and (a.refusals.count, a.refusals.n) == (3, 4)
    assert (a.changed.low, a.changed.high) == pytest.approx((0.3006418, 0.9544127), abs=1e-6)  # Wilson 3/4
    c = report.arm("control")
    assert c is not None and not c.aligns and c.changed is None
    assert c.refusals is not None and (c.refusals.count, c.refusals.n) == (1, 10)
    assert (c.refusals.low, c.refusals.high) == pytest.approx((0.0178762, 0.4041500), abs=1e-6)  # Wilson 1/10
    r = report.arm("rewrite")
    assert r is not None and r.refusals is None and r.changed is None  # unknown without answer texts

    g = report.guardrails["align"]
    # errors 2/6 vs 1/11, refusals 3/4 vs 1/10: the same test as the thumbs-up difference
    assert g.errors is not None and g.errors.test == two_proportion_test(2, 6, 1, 11)
    assert g.refusals is not None and g.refusals.test == two_proportion_test(3, 4, 1, 10)
    assert g.errors.always_valid is None
    # control p50 of 100..109 = 104.5, p95 = 108.55; align all 300
    assert g.latency_p50_delta == pytest.approx(195.5) and g.latency_p95_delta == pytest.approx(191.45)
    assert report.guardrails["rewrite"].refusals is None
    table = render_guardrails(report)
    assert "75.0% (30.1 to 95.4%), 3/4" in table  # align's refusals and changes
    assert "unknown (no answer texts)" in table and "n/a" in table
    assert "+196 / +191" in table
    # refusal guardrail 3/4 vs 1/10: z = 0.65/sqrt(4/14·10/14·(1/4 + 1/10)) = 2.4325, Holm over rewrite (none) and
    # align = raw p = 0.0150 < 0.05: the summary says so
    line = next(x for x in summary_lines(report) if x.startswith("**align**"))
    assert "refusal rate +65.0 points vs control (Holm p = 0.015)" in line
    assert "aligner changed 75.0% of 4 answers" in line


def test_srm_check() -> None:
    requests = [rec(f"c{i}", "control") for i in range(5000)] + [rec(f"a{i}", "align") for i in range(5200)]
    requests += [rec(f"f{i}", "align", forced=True) for i in range(300)]  # forced: not randomised, not counted
    # 5000 vs 5200 planned 50/50: χ² = 3.9215686, p = 0.0477 (test_stats): below 0.05 but not below 0.001
    check = srm_check(requests, "exp", ConfiguredExperiment("exp", {"control": 1.0, "align": 1.0}))
    assert check.status == "ok" and check.p_value == pytest.approx(0.0476704, abs=1e-6)
    assert [(a.arm, a.observed, a.expected_share) for a in check.arms] == [("control", 5000, 0.5), ("align", 5200, 0.5)]
    # planned 60/40 (weights 3:2): E = 6120, 4080; χ² = 1120²/6120 + 1120²/4080 = 512.42 → p far below 0.001
    check = srm_check(requests, "exp", ConfiguredExperiment("exp", {"control": 3.0, "align": 2.0, "rewrite": 0.0}))
    assert check.status == "mismatch" and check.statistic == pytest.approx(1120**2 / 6120 + 1120**2 / 4080)
    assert check.p_value is not None and check.p_value < 1e-100
    # an arm configured but never seen counts as 0 observed: 10 vs 0 → χ² = 10, 1 df, p = erfc(sqrt(5)) = 0.00157,
    # not yet below 0.001; 20 vs 0 → χ² = 20, p = erfc(sqrt(10)) = 7.74e-6
    half = ConfiguredExperiment("exp", {"control": 1.0, "align": 1.0})
    check = srm_check(requests[:10], "exp", half)
    assert check.status == "ok" and [a.observed for a in check.arms] == [10, 0]
    assert check.p_value == pytest.approx(0.0015654, abs=1e-6)
    check = srm_check(requests[:20], "exp", half)
    assert check.status == "mismatch" and check.p_value == pytest.approx(7.7442e-6, rel=1e-4)
    assert srm_check(requests, "exp", None).status == "not_run"
    assert srm_check(requests, "exp", ConfiguredExperiment("old", {"control": 1.0})).status == "not_run"
    assert srm_check(requests[-300:], "exp", ConfiguredExperiment("exp", {"align": 1.0})).status == "not_run"


def test_pairwise_win_rates_and_position_bias() -> None:
    prefs = (
        # align against control: 9 wins, 1 loss, 2 ties, whichever side each arm was on
        *[pref("align", "control", "a", left="a") for _ in range(5)],
        *[pref("control", "align", "b", left="a") for _ in range(4)],
        pref("align", "control", "b", left="b"),
        pref("align", "control", "tie", left="a"),
        pref("control", "align", "tie"),
        # align against rewrite (no control involved): rewrite chosen twice
        pref("rewrite", "align", "a", left="b"), pref("align", "rewrite", "b"),
        pref("align", "align", "a", left="a"),  # an arm against itself: left out of the pairs
    )
    arms = ["control", "rewrite", "align"]
    pairs = pairwise(prefs, arms)
    assert [(p.arm, p.baseline) for p in pairs] == [("rewrite", "control"), ("align", "control"), ("align", "rewrite")]
    rewrite_control, align_control, align_rewrite = pairs
    assert rewrite_control.n == 0 and rewrite_control.win_rate is None and rewrite_control.p_value == 1.0
    assert (align_control.wins, align_control.ties, align_control.losses) == (9, 2, 1)
    # win rate (9 + ½·2)/12 = 0.8333, Wilson of 10/12 = (0.5519691, 0.9530349); sign test 9 vs 1: 22/1024
    assert align_control.win_rate is not None and align_control.win_rate.value == pytest.approx(10 / 12)
    assert (align_control.win_rate.low, align_control.win_rate.high) == pytest.approx((0.5519691, 0.9530349), abs=1e-6)
    assert align_control.p_value == pytest.approx(22 / 1024)
    assert (align_rewrite.wins, align_rewrite.ties, align_rewrite.losses) == (0, 0, 2)
    # left known and not a tie: 5 (a on the left, chose a: left) + 4 (a on the left, chose b: right) + 1 (b left,
    # chose b: left) + 1 (b left, chose a: right) + 1 (align vs align, a left, chose a: left) → 7 of 12 to the left;
    # sign test 7 vs 5: 2·P(X <= 5 | 12, ½) = 2·1586/4096 = 0.7744
    bias = position_bias(prefs)
    assert bias is not None
    assert (bias.left.count, bias.left.n) == (7, 12)
    assert bias.p_value == pytest.approx(2 * 1586 / 4096)
    report = summarize(snapshot(("control", 1, 2), ("rewrite", 1, 2), ("align", 1, 2), preferences=prefs))
    table = render_pairwise(report)
    assert table is not None and "| align   | control |          12 |            9 / 2 / 1 |" in table
    md = render_markdown(report)
    assert "## Pairwise preferences" in md
    assert "win rate 83.3% (95% CI 55.2 to 95.3%), sign test p = 0.021" in md
    assert "**position bias**: 58.3% of 12 decided comparisons went to the answer shown on the left" in md
