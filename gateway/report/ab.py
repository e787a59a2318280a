"""``aligngate ab report``: the per-arm results of an experiment, rendered: the terminal/Markdown tables
(:func:`render_table`, :func:`render_guardrails`, :func:`render_pairwise`), plain-language lines
(:func:`summary_lines`), ``report.md`` (:func:`render_markdown`) and ``report.png`` (:func:`write_png`), written by
:func:`write_report`.

The figures are :mod:`gateway.report.abstats` (:func:`summarize` → :class:`ABReport`, re-exported here), the JSON
form for the web page is :mod:`gateway.report.abjson` (:func:`~gateway.report.abjson.report_json`, which uses
the lines of :func:`summary_lines`), the statistics :mod:`core.stats` (pure Python). matplotlib is imported only
to draw the PNG: without it the report says so and ``report.md`` is written alone.

Wording: a difference is "significant" only when its **Holm-adjusted** p-value is below 1 - confidence; the raw
p-value is shown beside it. A failed SRM check makes every line say the results are untrustworthy.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from gateway.report.abstats import (
    CONTROL,
    ABReport,
    ArmStats,
    Comparison,
    Rate,
    arm_stats,
    summarize,
)
from gateway.report.files import ReportFiles, write_report_files
from gateway.report.source import format_time

__all__ = [
    "ABReport",
    "ArmStats",
    "Comparison",
    "ReportFiles",
    "arm_stats",
    "format_p",
    "render_guardrails",
    "render_markdown",
    "render_pairwise",
    "render_table",
    "srm_line",
    "summarize",
    "summary_lines",
    "write_png",
    "write_report",
]

_DASH = "—"


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _span(low: float, high: float) -> str:
    return f"{100 * low:.1f} to {_pct(high)}"


def _points(x: float) -> str:
    return f"{100 * x:+.1f}"


def _ms(x: float | None) -> str:
    if x is None:
        return _DASH
    return f"{x:.0f}" if abs(x) >= 100 else f"{x:.1f}"


def _delta_ms(x: float | None) -> str:
    return _DASH if x is None else f"{x:+.0f}"


def format_p(p: float) -> str:
    """A p-value to 3 decimals (``< 0.001`` below that)."""
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def _p_is(p: float) -> str:
    """``p = 0.025`` or ``p < 0.001``."""
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def _conf(report: ABReport) -> str:
    return f"{100 * report.confidence:g}%"


def _rate_cell(rate: Rate | None, unknown: str = _DASH) -> str:
    if rate is None:
        return unknown
    count = f"{rate.count:g}"
    return f"{_pct(rate.value)} ({_span(rate.low, rate.high)}), {count}/{rate.n}"


def _diff_cell(comp: Comparison | None) -> str:
    if comp is None:
        return _DASH
    t = comp.test
    return f"{_points(t.difference)} ({_points(t.low)} to {_points(t.high)})"


def _p_cell(comp: Comparison | None) -> str:
    if comp is None:
        return _DASH
    return format_p(comp.test.p_value) + (" *" if comp.rough else "")


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], right: set[int]) -> str:
    widths = [max(len(header[i]), *(len(r[i]) for r in rows)) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(
            cell.rjust(widths[i]) if i in right else cell.ljust(widths[i]) for i, cell in enumerate(cells)
        ) + " |"

    rule = "|" + "|".join(("-" * (w + 1) + ":") if i in right else ("-" * (w + 2)) for i, w in enumerate(widths)) + "|"
    return "\n".join([line(header), rule, *(line(r) for r in rows)])


def render_table(report: ABReport) -> str:
    """The per-arm table of the primary metric, thumbs-up (Markdown, readable as plain text)."""
    c = _conf(report)
    header = [
        "arm", "requests", "errors", "latency p50 / p95 (ms)", "rewriter p50 (ms)", "aligner p50 (ms)",
        "feedback", f"thumbs-up ({c} CI)", f"vs control, points ({c} CI)", "p", "p (Holm)",
        f"always-valid {c} CI",
    ]
    rows: list[list[str]] = []
    for a in report.arms:
        if a.up_interval is not None and a.up_rate is not None:
            lo, hi = a.up_interval
            up = f"{_pct(a.up_rate)} ({_span(lo, hi)}), {a.up}/{a.rated}"
        else:
            up = _DASH
        comp = report.comparisons.get(a.arm)
        seq = comp.always_valid if comp is not None else None
        rows.append([
            a.arm,
            str(a.requests),
            f"{a.errors} ({_pct(a.error_rate)})",
            f"{_ms(a.latency_p50)} / {_ms(a.latency_p95)}",
            _ms(a.rewriter_p50),
            _ms(a.aligner_p50),
            f"{a.rated} ({_pct(a.rated / a.requests)})",
            up,
            _diff_cell(comp),
            _p_cell(comp),
            format_p(comp.p_holm) if comp is not None else _DASH,
            f"{_points(seq.low)} to {_points(seq.high)}" if seq is not None else _DASH,
        ])
    return _table(header, rows, {1, 2, 3, 4, 5, 6, 9, 10})


def render_guardrails(report: ABReport) -> str:
    """Guardrails per arm: error rate, refusal rate, aligner changes, and their differences against control."""
    c = _conf(report)
    header = [
        "arm", f"error rate ({c} CI)", "vs control, points", "p (Holm)", f"refusals ({c} CI)",
        "vs control, points", "p (Holm)", "aligner changed", "latency Δ p50 / p95 (ms)",
    ]
    rows: list[list[str]] = []
    for a in report.arms:
        g = report.guardrails.get(a.arm)
        errors = g.errors if g is not None else None
        refusals = g.refusals if g is not None else None
        error_rate = (
            f"{_pct(a.error_rate)} ({_span(*a.error_interval)}), {a.errors}/{a.requests}"
            if a.error_interval is not None else _DASH
        )
        changed = _rate_cell(a.changed, "unknown (no answer texts)") if a.aligns else "n/a"
        rows.append([
            a.arm,
            error_rate,
            _diff_cell(errors),
            f"{_p_cell(errors)} ({format_p(errors.p_holm)})" if errors is not None else _DASH,
            _rate_cell(a.refusals, "unknown (no answer texts)"),
            _diff_cell(refusals),
            f"{_p_cell(refusals)} ({format_p(refusals.p_holm)})" if refusals is not None else _DASH,
            changed,
            f"{_delta_ms(g.latency_p50_delta)} / {_delta_ms(g.latency_p95_delta)}" if g is not None else _DASH,
        ])
    return _table(header, rows, {3, 6, 8})


def render_pairwise(report: ABReport) -> str | None:
    """Win rates from pairwise preferences (None when there are no pairs to show)."""
    if not report.pairwise:
        return None
    c = _conf(report)
    header = ["arm", "vs", "comparisons", "wins / ties / losses", f"win rate, ties ½ ({c} CI)", "sign test p"]
    rows = [
        [
            p.arm, p.baseline, str(p.n), f"{p.wins} / {p.ties} / {p.losses}",
            _DASH if p.win_rate is None else f"{_pct(p.win_rate.value)} ({_span(p.win_rate.low, p.win_rate.high)})",
            format_p(p.p_value) if p.n else _DASH,
        ]
        for p in report.pairwise
    ]
    return _table(header, rows, {2, 3, 5})


def srm_line(report: ABReport) -> str:
    """The sample-ratio-mismatch verdict in plain words."""
    srm = report.srm
    if srm.status == "not_run" or srm.p_value is None:
        return f"SRM check not run: {srm.reason}."
    shares = ", ".join(
        f"{a.arm} {a.observed} ({_pct(a.observed / max(1, sum(x.observed for x in srm.arms)))} vs "
        f"{_pct(a.expected_share)} configured)"
        for a in srm.arms
    )
    if srm.status == "mismatch":
        return (f"SRM: observed shares differ from configured ({_p_is(srm.p_value)}) — results untrustworthy: "
                f"{shares}.")
    return f"SRM check passed: observed shares match the configured ones ({_p_is(srm.p_value)}): {shares}."


def _latency_words(a: ArmStats, control: ArmStats | None) -> str:
    if a.latency_p50 is None:
        return "no successful requests to time"
    text = f"latency p50 {_ms(a.latency_p50)} ms, p95 {_ms(a.latency_p95)} ms"
    if control is not None and a is not control and control.latency_p50 is not None:
        text += f" ({a.latency_p50 - control.latency_p50:+.0f} ms p50 vs control)"
    return text


def _guardrail_words(report: ABReport, a: ArmStats) -> str:
    alpha = 1.0 - report.confidence
    words: list[str] = []
    g = report.guardrails.get(a.arm)
    for name, comp in (("error rate", g.errors if g else None), ("refusal rate", g.refusals if g else None)):
        if comp is not None and comp.p_holm < alpha:
            words.append(f"{name} {_points(comp.test.difference)} points vs control (Holm {_p_is(comp.p_holm)})")
    if a.refusals is None:
        words.append("refusals unknown (the store kept no answer texts)")
    if a.aligns:
        words.append("aligner changed " + (_pct(a.changed.value) + f" of {a.changed.n} answers"
                                            if a.changed is not None else "an unknown share of answers (no texts)"))
    return "; ".join(words)


def summary_lines(report: ABReport) -> list[str]:
    """Plain-language lines: the SRM verdict, then one per arm."""
    control = report.arm(CONTROL)
    c = _conf(report)
    alpha = 1.0 - report.confidence
    lines: list[str] = [srm_line(report)]
    for a in report.arms:
        errors = f"errors {_pct(a.error_rate)} of {a.requests} requests"
        tail = "; ".join(x for x in (errors, _latency_words(a, control), _guardrail_words(report, a)) if x)
        if a.up_rate is None or a.up_interval is None:
            lines.append(f"**{a.arm}**: no rated requests yet, so no thumbs-up rate; {tail}.")
            continue
        lo, hi = a.up_interval
        rate = f"thumbs-up {_pct(a.up_rate)} ({c} CI {_span(lo, hi)}) of {a.rated} rated"
        comp = report.comparisons.get(a.arm)
        if a.arm == CONTROL or control is None:
            lines.append(f"**{a.arm}**: {rate}; {tail}.")
            continue
        if comp is None:  # control has no ratings
            lines.append(f"**{a.arm}**: {rate}; control has no ratings to compare with; {tail}.")
            continue
        t = comp.test
        several = len(report.comparisons) > 1
        if comp.p_holm < alpha:
            verdict = (f"significant after Holm correction (Holm {_p_is(comp.p_holm)})" if several
                       else f"significant at the {100 * alpha:g}% level")
        else:
            verdict = (f"not significant after Holm correction (Holm {_p_is(comp.p_holm)})" if several
                       else f"not significant at the {100 * alpha:g}% level: consistent with no difference")
        rough = "; few ratings, so the p-value (normal approximation) is rough" if comp.rough else ""
        seq = comp.always_valid
        always = (
            f"; always-valid {c} CI {_points(seq.low)} to {_points(seq.high)}, {_p_is(seq.p_value)} (safe "
            f"to check every day; tuned for {report.planned_n} ratings per arm)" if seq is not None else ""
        )
        untrusted = " Untrustworthy: the SRM check failed." if report.srm.status == "mismatch" else ""
        lines.append(
            f"**{a.arm}**: {_points(t.difference)} points vs control ({c} CI {_points(t.low)} to "
            f"{_points(t.high)}), {_p_is(t.p_value)}, {verdict}{rough}{always}. {rate} vs "
            f"{_pct(control.up_rate or 0.0)} of {control.rated} for control; {tail}.{untrusted}"
        )
    if report.pairwise:
        for p in report.pairwise:
            if p.win_rate is None:
                continue
            lines.append(
                f"**{p.arm} vs {p.baseline}** (people's side-by-side choices): wins {p.wins}, ties {p.ties}, losses "
                f"{p.losses}; win rate {_pct(p.win_rate.value)} ({c} CI {_span(p.win_rate.low, p.win_rate.high)}), "
                f"sign test {_p_is(p.p_value)}."
            )
    if report.position_bias is not None:
        b = report.position_bias.left
        lines.append(
            f"**position bias**: {_pct(b.value)} of {b.n} decided comparisons went to the answer shown on the left "
            f"({c} CI {_span(b.low, b.high)}; {_p_is(report.position_bias.p_value)} against 50%)."
        )
    return lines


def render_markdown(report: ABReport, png_note: str | None = None) -> str:
    """``report.md``: header, tables, summary, chart (or why there is none), method."""
    c = _conf(report)
    scope = f"requests from {format_time(report.first)} to {format_time(report.last)}"
    if report.since is not None:
        scope += f" (since {format_time(report.since)})"
    which = "" if report.experiments <= 1 else (
        f" — one of {report.experiments} experiments in the store (`--experiment NAME` picks another)"
    )
    if report.include_forced:
        forced = "Forced-arm requests (`X-Aligngate-Arm`) are **included** (`--include-forced`): they are not " \
                 "randomised, so differences may reflect who forced which arm."
    elif report.forced_excluded:
        forced = f"{report.forced_excluded} forced-arm requests (`X-Aligngate-Arm`) are left out: they are not " \
                 "randomised (`--include-forced` includes them)."
    else:
        forced = "No forced-arm requests were left out."
    parts = [
        f"# A/B report: experiment `{report.experiment}`",
        "",
        f"Store `{report.store}`{which}; {scope}. {forced}",
        "",
        render_table(report),
        "",
    ]
    rough = any(comp.rough for comp in report.comparisons.values()) or any(
        comp is not None and comp.rough for g in report.guardrails.values() for comp in (g.errors, g.refusals)
    )
    if rough:
        parts += ["\\* fewer than 5 expected events or non-events in an arm: the p-value is rough.", ""]
    parts += ["## Guardrails", "", render_guardrails(report), ""]
    pairs = render_pairwise(report)
    if pairs is not None:
        parts += ["## Pairwise preferences", "", pairs, ""]
    parts += ["## Summary", ""]
    parts += [f"- {line}" for line in summary_lines(report)]
    if report.arm(CONTROL) is None:
        parts.append("- No `control` arm in this experiment: no differences are computed.")
    parts.append("")
    if png_note is None:
        parts += ["![thumbs-up rate and latency per arm](report.png)", ""]
    else:
        parts += [f"_{png_note}_", ""]
    parts += [
        "## Method",
        "",
        "- **errors**: status >= 400, or a response that failed after it started (broken stream, client "
        "disconnected). **Latency**: total request time of requests without error; helper p50 over the requests "
        "where that helper ran; percentiles interpolate linearly.",
        "- **feedback**: requests with at least one rating; a request rated more than once counts once, by its "
        f"latest rating. **Thumbs-up rate** = latest rating +1 / rated requests, with a {c} Wilson score interval.",
        "- **vs control**: difference of rates in percentage points with Newcombe's hybrid score interval (from "
        f"the two Wilson intervals; {c}) and the p-value of a two-sided two-proportion z-test (pooled standard "
        "error). **p (Holm)**: Holm-Bonferroni adjusted over the arms compared with control (each metric its own "
        "family); \"significant\" uses it.",
        "- **always-valid CI**: a confidence sequence (normal mixture, Johari et al. 2017; Waudby-Smith et al.) "
        f"tuned for {report.planned_n} ratings per arm: valid however often you look, so wider than the fixed CI; "
        "its p-value may be read at any time.",
        "- **SRM**: non-forced requests per arm against the configured weights, chi-square goodness of fit; "
        "flagged below p = 0.001. Arms are assigned per user, so a few very active users can also move the counts.",
        "- **refusals**: served answers whose beginning matches the refusal patterns of `core/refusal.py`; "
        "**aligner changed**: aligning arms' answers that differ from the backend's; both need answer texts "
        "(`store.log_bodies`). **Win rate**: (wins + ½ ties) / comparisons, Wilson interval; sign test without ties.",
        "",
    ]
    return "\n".join(parts)


_PNG_MISSING = "report.png was not written: matplotlib is not installed (`pip install matplotlib`)."


def write_png(report: ABReport, path: Path) -> str | None:
    """Draw ``report.png``: thumbs-up rate per arm with its interval, latency p50/p95 per arm. Returns None when
    written, else why not (matplotlib missing)."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return _PNG_MISSING
    names = [a.arm for a in report.arms]
    xs = list(range(len(names)))
    fig = Figure(figsize=(max(8.0, 2.2 * len(names) + 3.0), 4.2), layout="constrained")
    ax_up, ax_lat = fig.subplots(1, 2)
    ax_up.bar(xs, [100 * (a.up_rate or 0.0) for a in report.arms], color="#4C72B0")
    rated = [(x, a.up_rate, a.up_interval) for x, a in zip(xs, report.arms, strict=True)]
    bars = [(x, rate, ci) for x, rate, ci in rated if rate is not None and ci is not None]
    if bars:
        ax_up.errorbar(
            [x for x, _, _ in bars], [100 * rate for _, rate, _ in bars],
            yerr=[[100 * (rate - ci[0]) for _, rate, ci in bars], [100 * (ci[1] - rate) for _, rate, ci in bars]],
            fmt="none", ecolor="black", capsize=6,
        )
    for x, a in zip(xs, report.arms, strict=True):
        label = f"{a.up}/{a.rated}" if a.rated else "no ratings"
        top = 100 * a.up_interval[1] if a.up_interval else 0.0
        ax_up.annotate(label, (x, top), textcoords="offset points", xytext=(0, 4), ha="center", fontsize=8)
    ax_up.set_xticks(xs, names)
    ax_up.set_ylim(0, 110)
    ax_up.set_ylabel("thumbs-up rate (%)")
    ax_up.set_title(f"thumbs-up rate, {_conf(report)} Wilson interval")
    width = 0.38
    p50 = [a.latency_p50 or 0.0 for a in report.arms]
    p95 = [a.latency_p95 or 0.0 for a in report.arms]
    ax_lat.bar([x - width / 2 for x in xs], p50, width, label="p50", color="#55A868")
    ax_lat.bar([x + width / 2 for x in xs], p95, width, label="p95", color="#C44E52")
    ax_lat.set_xticks(xs, names)
    ax_lat.set_ylabel("latency (ms)")
    ax_lat.set_title("latency of requests without error")
    ax_lat.legend()
    fig.suptitle(f"experiment {report.experiment}")
    fig.savefig(path, dpi=110, format="png")
    return None


def write_report(report: ABReport, out_dir: Path) -> ReportFiles:
    """Write ``report.png`` (when matplotlib is there) and ``report.md`` into ``out_dir`` (created)."""
    return write_report_files(
        out_dir, lambda png: write_png(report, png), lambda note: render_markdown(report, note)
    )
