"""The JSON form of an A/B report (:func:`report_json`), for the web page (``GET /ui/api/experiment``): the same
:class:`~gateway.report.abstats.ABReport` that ``aligngate ab report`` renders as tables, as plain JSON types.

JSON-safe: only dicts, lists, str, int, float, bool and None; no NaN or infinity (a non-finite number becomes
None); None (``null``) means unknown or not applicable. Rates and differences are fractions (0.25 = 25 %,
a difference of 0.05 = 5 points); times are epoch seconds; latencies milliseconds.

Keys (``version`` changes when a key changes meaning or goes away; new keys may appear)::

    version            1
    experiment         str              store        str (password hidden)      experiments   int (in the store)
    since              float | null     first, last  float (first/last request)
    include_forced     bool             forced_excluded   int
    confidence         float (0.95)     alpha        float (1 - confidence)     planned_n     int
    control            "control" | null (null: no control arm, no comparisons)
    arms               [arm]            in the canonical order (control first)
    srm                srm
    pairwise           [pair]
    position_bias      {left: rate, p_value: float} | null (null: no preference with a known left side)
    summary            [str]            the plain-language lines of report.md (Markdown: **bold**)

    arm = {arm: str, requests: int, errors: int, error_rate: rate | null,
           latency_p50_ms, latency_p95_ms, rewriter_p50_ms, aligner_p50_ms: float | null,
           rated: int, thumbs_up: rate | null (null: no ratings),
           refusals: rate | null (null: no answer texts in the store),
           aligns: bool, aligner_changed: rate | null (null: not an aligning arm, or no answer texts),
           vs_control: null (control itself, or no control) | {
               thumbs_up: comparison | null (null: this arm or control has no ratings),
               errors: comparison, refusals: comparison | null,
               latency_p50_delta_ms, latency_p95_delta_ms: float | null (arm - control)}}
    rate = {count: float, n: int, rate: float, low: float, high: float}      (Wilson interval)
    comparison = {difference: float, low: float, high: float (Newcombe interval), z: float, p_value: float,
                  p_holm: float, significant: bool (p_holm < alpha), rough: bool (fewer than 5 expected events),
                  always_valid: {low: float, high: float, p_value: float} | null (thumbs-up only)}
    srm = {status: "ok" | "mismatch" | "not_run", reason: str | null (why not run), threshold: 0.001,
           statistic: float | null, df: int | null, p_value: float | null,
           arms: [{arm: str, observed: int, observed_share: float, expected_share: float}]}
    pair = {arm: str, baseline: str, n: int, wins: int, ties: int, losses: int (of arm against baseline),
            win_rate: rate | null (ties count ½; null: no comparisons), p_value: float (sign test, ties left out)}
"""

from __future__ import annotations

import math
from typing import Any

from core.stats import AlwaysValid
from gateway.report.ab import summary_lines
from gateway.report.abstats import CONTROL, SRM_ALPHA, ABReport, ArmStats, Comparison, Rate

__all__ = ["JSON_VERSION", "report_json"]

JSON_VERSION = 1


def _num(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def _rate(rate: Rate | None) -> dict[str, Any] | None:
    if rate is None:
        return None
    return {"count": _num(rate.count), "n": rate.n, "rate": _num(rate.value), "low": _num(rate.low),
            "high": _num(rate.high)}


def _interval_rate(count: int, n: int, interval: tuple[float, float] | None) -> dict[str, Any] | None:
    return None if interval is None or n == 0 else _rate(Rate(count, n, *interval))


def _always_valid(seq: AlwaysValid | None) -> dict[str, Any] | None:
    if seq is None:
        return None
    return {"low": _num(seq.low), "high": _num(seq.high), "p_value": _num(seq.p_value)}


def _comparison(comp: Comparison | None, alpha: float) -> dict[str, Any] | None:
    if comp is None:
        return None
    t = comp.test
    return {
        "difference": _num(t.difference), "low": _num(t.low), "high": _num(t.high), "z": _num(t.z),
        "p_value": _num(t.p_value), "p_holm": _num(comp.p_holm), "significant": comp.p_holm < alpha,
        "rough": comp.rough, "always_valid": _always_valid(comp.always_valid),
    }


def _arm(report: ABReport, a: ArmStats, alpha: float) -> dict[str, Any]:
    g = report.guardrails.get(a.arm)
    vs_control = None if g is None else {
        "thumbs_up": _comparison(report.comparisons.get(a.arm), alpha),
        "errors": _comparison(g.errors, alpha),
        "refusals": _comparison(g.refusals, alpha),
        "latency_p50_delta_ms": _num(g.latency_p50_delta),
        "latency_p95_delta_ms": _num(g.latency_p95_delta),
    }
    return {
        "arm": a.arm,
        "requests": a.requests,
        "errors": a.errors,
        "error_rate": _interval_rate(a.errors, a.requests, a.error_interval),
        "latency_p50_ms": _num(a.latency_p50),
        "latency_p95_ms": _num(a.latency_p95),
        "rewriter_p50_ms": _num(a.rewriter_p50),
        "aligner_p50_ms": _num(a.aligner_p50),
        "rated": a.rated,
        "thumbs_up": _interval_rate(a.up, a.rated, a.up_interval),
        "refusals": _rate(a.refusals),
        "aligns": a.aligns,
        "aligner_changed": _rate(a.changed),
        "vs_control": vs_control,
    }


def report_json(report: ABReport) -> dict[str, Any]:
    """The report as JSON-safe Python values (keys: see the module docstring); ``json.dumps(...,
    allow_nan=False)`` accepts it."""
    alpha = 1.0 - report.confidence
    srm = report.srm
    observed_total = sum(a.observed for a in srm.arms)
    bias = report.position_bias
    return {
        "version": JSON_VERSION,
        "experiment": report.experiment,
        "store": report.store,
        "experiments": report.experiments,
        "since": _num(report.since),
        "first": _num(report.first),
        "last": _num(report.last),
        "include_forced": report.include_forced,
        "forced_excluded": report.forced_excluded,
        "confidence": report.confidence,
        "alpha": round(alpha, 12),
        "planned_n": report.planned_n,
        "control": CONTROL if report.arm(CONTROL) is not None else None,
        "arms": [_arm(report, a, alpha) for a in report.arms],
        "srm": {
            "status": srm.status,
            "reason": srm.reason,
            "threshold": SRM_ALPHA,
            "statistic": _num(srm.statistic),
            "df": srm.df,
            "p_value": _num(srm.p_value),
            "arms": [
                {"arm": a.arm, "observed": a.observed,
                 "observed_share": _num(a.observed / observed_total) if observed_total else None,
                 "expected_share": _num(a.expected_share)}
                for a in srm.arms
            ],
        },
        "pairwise": [
            {"arm": p.arm, "baseline": p.baseline, "n": p.n, "wins": p.wins, "ties": p.ties, "losses": p.losses,
             "win_rate": _rate(p.win_rate), "p_value": _num(p.p_value)}
            for p in report.pairwise
        ],
        "position_bias": None if bias is None else {"left": _rate(bias.left), "p_value": _num(bias.p_value)},
        "summary": summary_lines(report),
    }
