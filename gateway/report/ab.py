"""``aligngate ab report``: per-arm results of an experiment from the trace store, with the statistics behind them.

What is measured, per arm (rows of ``requests`` of one experiment; forced-arm rows left out unless asked for,
because a client that picks its arm is not randomised):

* **requests**, and the **error rate**: requests with status >= 400, or whose response failed after it started
  (``outcome`` set: a broken stream, a client that disconnected), over all requests.
* **latency p50 / p95**: total request time (``latency_ms``) of the requests without error; **rewriter p50**
  and **aligner p50**: helper time (``rewriter_ms``, ``aligner_ms``) of the requests where that helper ran.
  Percentiles interpolate linearly between the two nearest values (numpy's default, R's type 7).
* **feedback**: requests with at least one rating; each counts once, by its **latest** rating.
* **thumbs-up rate** = requests whose latest rating is +1 / requests with a rating, with a **Wilson score
  interval** (:func:`wilson_interval`; unlike the Wald interval it stays inside [0, 1] and is honest for small
  counts and rates near 0 or 1).
* **difference against control** (percentage points) with a **two-sided two-proportion z-test**
  (:func:`two_proportion_test`: pooled standard error for the test statistic, as the null hypothesis says both
  arms share one rate) and a Wald confidence interval of the difference (unpooled standard error). The
  p-values are not corrected for comparing several arms with one control.

The statistics are :mod:`core.stats` (pure Python). :func:`summarize` turns a
:class:`~gateway.report.source.Snapshot` into an :class:`ABReport`; :func:`render_markdown` and
:func:`write_report` write ``report.md`` (table, plain-language summary per arm, method) and ``report.png``
(thumbs-up rate with its interval and latency p50/p95 per arm). matplotlib is imported only to draw the PNG:
without it the report says so and ``report.md`` is written alone.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from core.stats import ProportionTest, percentile, two_proportion_test, wilson_interval
from gateway.config import ARMS
from gateway.report.files import ReportFiles, write_report_files
from gateway.report.source import RequestRecord, Snapshot, format_time

__all__ = [
    "ABReport",
    "ArmStats",
    "Comparison",
    "ReportFiles",
    "arm_stats",
    "format_p",
    "render_markdown",
    "render_table",
    "summarize",
    "summary_lines",
    "write_png",
    "write_report",
]

CONTROL = "control"
#: Below this many expected thumbs-up or thumbs-down in an arm, the normal approximation is rough.
_MIN_EXPECTED = 5.0

# ------------------------------------------------------------------------------------------------- per arm


@dataclass(frozen=True, slots=True)
class ArmStats:
    arm: str
    requests: int
    errors: int
    latency_p50: float | None
    latency_p95: float | None
    rewriter_p50: float | None
    aligner_p50: float | None
    #: Requests with at least one rating, and those whose latest rating is thumbs-up.
    rated: int
    up: int
    #: Wilson interval of ``up / rated`` (None without ratings).
    up_interval: tuple[float, float] | None

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    @property
    def up_rate(self) -> float | None:
        return self.up / self.rated if self.rated else None


@dataclass(frozen=True, slots=True)
class Comparison:
    """An arm against control: the test, and whether too few ratings make its normal approximation rough."""

    arm: str
    test: ProportionTest
    rough: bool


@dataclass(frozen=True, slots=True)
class ABReport:
    store: str
    experiment: str
    #: How many experiments the store has (the report is about one).
    experiments: int
    since: float | None
    include_forced: bool
    forced_excluded: int
    first: float
    last: float
    confidence: float
    arms: tuple[ArmStats, ...]
    comparisons: dict[str, Comparison] = field(default_factory=dict)

    def arm(self, name: str) -> ArmStats | None:
        return next((a for a in self.arms if a.arm == name), None)


def _arm_order(arms: Iterable[str]) -> list[str]:
    """The gateway's arms in their usual order (control first), then any other arm by name."""
    present = set(arms)
    return [a for a in ARMS if a in present] + sorted(present - set(ARMS))


def arm_stats(snapshot: Snapshot, confidence: float = 0.95) -> list[ArmStats]:
    """Per-arm figures of the snapshot's requests (see the module docstring), arms in the canonical order."""
    by_arm: dict[str, list[RequestRecord]] = {}
    for rec in snapshot.requests:
        by_arm.setdefault(rec.arm, []).append(rec)
    out: list[ArmStats] = []
    for arm in _arm_order(by_arm):
        recs = by_arm[arm]
        ok = [r for r in recs if r.ok]
        ratings = [snapshot.feedback[r.id].rating for r in recs if r.id in snapshot.feedback]
        up = sum(1 for rating in ratings if rating == 1)
        out.append(ArmStats(
            arm=arm,
            requests=len(recs),
            errors=len(recs) - len(ok),
            latency_p50=percentile((r.latency_ms for r in ok), 50),
            latency_p95=percentile((r.latency_ms for r in ok), 95),
            rewriter_p50=percentile((r.rewriter_ms for r in recs if r.rewriter_ms is not None), 50),
            aligner_p50=percentile((r.aligner_ms for r in recs if r.aligner_ms is not None), 50),
            rated=len(ratings),
            up=up,
            up_interval=wilson_interval(up, len(ratings), confidence) if ratings else None,
        ))
    return out


def _rough(a: ArmStats, b: ArmStats) -> bool:
    pooled = (a.up + b.up) / (a.rated + b.rated)
    return any(min(n * pooled, n * (1 - pooled)) < _MIN_EXPECTED for n in (a.rated, b.rated))


def summarize(snapshot: Snapshot, *, confidence: float = 0.95, since: float | None = None,
              include_forced: bool = False) -> ABReport:
    """The report of a snapshot of one experiment (``read_store(..., latest_by_default=True)``).

    Raises ``ValueError`` when the snapshot has no requests.
    """
    if not snapshot.requests:
        raise ValueError("no requests to report on")
    arms = arm_stats(snapshot, confidence)
    comparisons: dict[str, Comparison] = {}
    control = next((a for a in arms if a.arm == CONTROL), None)
    if control is not None and control.rated:
        for a in arms:
            if a.arm != CONTROL and a.rated:
                test = two_proportion_test(a.up, a.rated, control.up, control.rated, confidence)
                comparisons[a.arm] = Comparison(a.arm, test, _rough(a, control))
    experiment = snapshot.experiment or snapshot.requests[-1].experiment
    return ABReport(
        store=snapshot.url,
        experiment=experiment,
        experiments=len(snapshot.experiments),
        since=since,
        include_forced=include_forced,
        forced_excluded=snapshot.forced_excluded,
        first=snapshot.requests[0].time,
        last=snapshot.requests[-1].time,
        confidence=confidence,
        arms=tuple(arms),
        comparisons=comparisons,
    )


# ------------------------------------------------------------------------------------------------- rendering

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


def format_p(p: float) -> str:
    """A p-value to 3 decimals (``< 0.001`` below that)."""
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def _conf(report: ABReport) -> str:
    return f"{100 * report.confidence:g}%"


def render_table(report: ABReport) -> str:
    """The per-arm table (Markdown, readable as plain text)."""
    c = _conf(report)
    header = [
        "arm", "requests", "errors", "latency p50 / p95 (ms)", "rewriter p50 (ms)", "aligner p50 (ms)",
        "feedback", f"thumbs-up ({c} CI)", f"vs control, points ({c} CI)", "p",
    ]
    rows: list[list[str]] = []
    for a in report.arms:
        if a.up_interval is not None and a.up_rate is not None:
            lo, hi = a.up_interval
            up = f"{_pct(a.up_rate)} ({_span(lo, hi)}), {a.up}/{a.rated}"
        else:
            up = _DASH
        comp = report.comparisons.get(a.arm)
        if comp is not None:
            t = comp.test
            vs = f"{_points(t.difference)} ({_points(t.low)} to {_points(t.high)})"
            p = format_p(t.p_value) + (" *" if comp.rough else "")
        else:
            vs = p = _DASH
        rows.append([
            a.arm,
            str(a.requests),
            f"{a.errors} ({_pct(a.error_rate)})",
            f"{_ms(a.latency_p50)} / {_ms(a.latency_p95)}",
            _ms(a.rewriter_p50),
            _ms(a.aligner_p50),
            f"{a.rated} ({_pct(a.rated / a.requests)})",
            up,
            vs,
            p,
        ])
    widths = [max(len(header[i]), *(len(r[i]) for r in rows)) for i in range(len(header))]
    right = {1, 2, 3, 4, 5, 6, 9}

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(
            cell.rjust(widths[i]) if i in right else cell.ljust(widths[i]) for i, cell in enumerate(cells)
        ) + " |"

    rule = "|" + "|".join(("-" * (w + 1) + ":") if i in right else ("-" * (w + 2)) for i, w in enumerate(widths)) + "|"
    return "\n".join([line(header), rule, *(line(r) for r in rows)])


def _latency_words(a: ArmStats, control: ArmStats | None) -> str:
    if a.latency_p50 is None:
        return "no successful requests to time"
    text = f"latency p50 {_ms(a.latency_p50)} ms, p95 {_ms(a.latency_p95)} ms"
    if control is not None and a is not control and control.latency_p50 is not None:
        text += f" ({a.latency_p50 - control.latency_p50:+.0f} ms p50 vs control)"
    return text


def summary_lines(report: ABReport) -> list[str]:
    """One plain-language line per arm."""
    control = report.arm(CONTROL)
    c = _conf(report)
    alpha = 1.0 - report.confidence
    lines: list[str] = []
    for a in report.arms:
        errors = f"errors {_pct(a.error_rate)} of {a.requests} requests"
        latency = _latency_words(a, control)
        if a.up_rate is None or a.up_interval is None:
            lines.append(f"**{a.arm}**: no rated requests yet, so no thumbs-up rate; {errors}; {latency}.")
            continue
        lo, hi = a.up_interval
        rate = f"thumbs-up {_pct(a.up_rate)} ({c} CI {_span(lo, hi)}) of {a.rated} rated"
        comp = report.comparisons.get(a.arm)
        if a.arm == CONTROL or control is None:
            lines.append(f"**{a.arm}**: {rate}; {errors}; {latency}.")
            continue
        if comp is None:  # control has no ratings
            lines.append(f"**{a.arm}**: {rate}; control has no ratings to compare with; {errors}; {latency}.")
            continue
        t = comp.test
        verdict = (
            f"a difference unlikely to be chance alone (p < {alpha:g})" if t.p_value < alpha
            else f"not significant at the {100 * alpha:g}% level: consistent with no difference"
        )
        rough = (
            "; few ratings, so the p-value (normal approximation) is rough" if comp.rough else ""
        )
        lines.append(
            f"**{a.arm}**: {_points(t.difference)} points vs control ({c} CI {_points(t.low)} to "
            f"{_points(t.high)}), p = {format_p(t.p_value)}, {verdict}{rough}. {rate} vs "
            f"{_pct(control.up_rate or 0.0)} of {control.rated} for control; {errors}; {latency}."
        )
    return lines


def render_markdown(report: ABReport, png_note: str | None = None) -> str:
    """``report.md``: header, table, summary per arm, chart (or why there is none), method."""
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
    if any(comp.rough for comp in report.comparisons.values()):
        parts += ["\\* fewer than 5 expected thumbs-up or thumbs-down in an arm: the p-value is rough.", ""]
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
        "- **vs control**: difference of thumbs-up rates in percentage points, two-sided two-proportion z-test "
        f"(pooled standard error) and the difference's {c} Wald interval. p-values are not corrected for "
        "comparing several arms with one control.",
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
