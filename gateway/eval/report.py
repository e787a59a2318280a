"""The evaluation's report: the BPO-style pairwise table, the measures without a judge, and the headline JSON.

* :func:`pairwise_rows` — per prompt set x arm vs baseline x judge: n (pairs with a valid verdict), win / tie /
  lose shares of n, **ΔWR** = win rate - lose rate (the mean of the per-prompt outcomes +1 / 0 / -1) with a 95%
  percentile bootstrap interval over prompts (:func:`core.stats.bootstrap_mean_interval`, 2,000 resamples,
  seed 0, so a report is reproducible), invalid verdicts (left out of n), and pairs with no verdict at all.
* :func:`render_table` — the plain-text table ``aligngate eval`` prints; :func:`write_report` — ``report.md``
  (both tables, one line in words per comparison, skip reasons, the method) and ``report.png`` (ΔWR with its
  interval per comparison; latency p50/p95 per arm). matplotlib is imported only to draw the PNG: without it
  ``report.md`` is written alone and says so.
* :func:`headline` — the numbers of the last stdout line, as one JSON object.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from core.stats import bootstrap_mean_interval
from gateway.eval.measures import ArmMeasures
from gateway.eval.records import OUTCOME_VALUE, Judgement
from gateway.report.files import ReportFiles, write_report_files

__all__ = ["EvalReport", "PairwiseRow", "ReportFiles", "headline", "pairwise_rows", "render_table", "write_report"]

logger = logging.getLogger(__name__)

CONFIDENCE = 0.95
RESAMPLES = 2000


@dataclass(frozen=True, slots=True)
class PairwiseRow:
    set: str
    arm: str
    baseline: str
    judge: str
    #: Pairs with a valid verdict (win, tie or lose): the denominator of the shares and ΔWR.
    n: int
    wins: int
    ties: int
    losses: int
    invalid: int
    #: Pairs whose both answers exist but that have no verdict (the judge failed on them this run).
    unjudged: int
    delta_wr: float | None
    low: float | None
    high: float | None

    def share(self, count: int) -> float | None:
        return count / self.n if self.n else None


def pairwise_rows(
    judgements: dict[str, list[Judgement]], expected: dict[tuple[str, str, str], int], baseline: str
) -> list[PairwiseRow]:
    """Rows of the pairwise table. ``expected``: (set, arm, judge) → pairs that should have a verdict (every
    comparison listed there gets a row, in that order, even with no verdict yet)."""
    by: dict[tuple[str, str, str], list[Judgement]] = {k: [] for k in expected}
    for name, items in judgements.items():
        for j in items:
            by.setdefault((j.set, j.arm, name), []).append(j)
    rows: list[PairwiseRow] = []
    for (set_name, arm, judge), items in by.items():
        # sorted: the interval depends on the outcomes alone, not on the order their verdicts were made or cached
        values = sorted(OUTCOME_VALUE[j.outcome] for j in items if j.outcome != "invalid")
        n = len(values)
        wins = sum(1 for v in values if v > 0)
        losses = sum(1 for v in values if v < 0)
        delta = (wins - losses) / n if n else None
        low, high = bootstrap_mean_interval(values, CONFIDENCE, RESAMPLES, seed=0) if n else (None, None)
        rows.append(
            PairwiseRow(
                set=set_name,
                arm=arm,
                baseline=baseline,
                judge=judge,
                n=n,
                wins=wins,
                ties=n - wins - losses,
                losses=losses,
                invalid=len(items) - n,
                unjudged=max(0, expected.get((set_name, arm, judge), 0) - len(items)),
                delta_wr=delta,
                low=low,
                high=high,
            )
        )
    return rows


@dataclass
class EvalReport:
    title: str
    target: str
    baseline: str
    rows: list[PairwiseRow]
    measures: list[ArmMeasures]
    prompts: dict[str, int]
    answers_generated: int = 0
    answers_reused: int = 0
    answers_failed: int = 0
    judgements_made: int = 0
    judgements_reused: int = 0
    unjudged: int = 0
    judges: list[str] = field(default_factory=list)


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}"


def _signed(x: float | None) -> str:
    """Points with their sign; a bootstrap bound a hair below 0 is "+0.0", not "-0.0"."""
    return "—" if x is None else f"{round(100 * x, 1) + 0.0:+.1f}"


def _ci(row: PairwiseRow) -> str:
    if row.delta_wr is None or row.low is None or row.high is None:
        return "—"
    return f"{_signed(row.delta_wr)} ({_signed(row.low)} to {_signed(row.high)})"


def _num(x: float | None, digits: int = 0) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


_PAIR_HEAD = ["set", "arm vs baseline", "judge", "n", "win %", "tie %", "lose %", "ΔWR points (95% CI)", "invalid"]
_MEASURE_HEAD = [
    "set",
    "arm",
    "answers",
    "failed",
    "mean words",
    "refusal %",
    "aligner unchanged %",
    "edit distance",
    "rewritten %",
    "rewrite ratio",
    "p50 ms",
    "p95 ms",
]


def _pair_cells(r: PairwiseRow) -> list[str]:
    cells = [
        r.set,
        f"{r.arm} vs {r.baseline}",
        r.judge,
        str(r.n),
        _pct(r.share(r.wins)),
        _pct(r.share(r.ties)),
        _pct(r.share(r.losses)),
        _ci(r),
        str(r.invalid),
    ]
    if r.unjudged:
        cells[-1] += f" (+{r.unjudged} unjudged)"
    return cells


def _measure_cells(m: ArmMeasures) -> list[str]:
    return [
        m.set,
        m.arm,
        str(m.answers),
        str(m.failed),
        _num(m.mean_words, 1),
        _pct(m.refusal_rate),
        _pct(m.unchanged_share),
        _num(m.mean_edit_distance, 3),
        _pct(m.rewritten_share),
        _num(m.mean_rewrite_ratio, 2),
        _num(m.latency_p50_ms),
        _num(m.latency_p95_ms),
    ]


def _plain(head: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


def _markdown(head: list[str], rows: list[list[str]]) -> str:
    align = ["---" if i < 3 or h == "arm" else "---:" for i, h in enumerate(head)]
    out = ["| " + " | ".join(head) + " |", "|" + "|".join(align) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def render_table(report: EvalReport) -> str:
    """The two tables as plain text (pairwise first; it is empty without judges)."""
    parts = []
    if report.rows:
        parts.append(_plain(_PAIR_HEAD, [_pair_cells(r) for r in report.rows]))
    parts.append(_plain(_MEASURE_HEAD, [_measure_cells(m) for m in report.measures]))
    return "\n\n".join(parts)


def _sentence(r: PairwiseRow) -> str:
    if not r.n:
        return f"- {r.set}, {r.arm} vs {r.baseline}, {r.judge}: no valid verdict ({r.invalid} invalid)."
    return (
        f"- {r.set}, {r.arm} vs {r.baseline}, {r.judge}: ΔWR {_signed(r.delta_wr)} points "
        f"(95% CI {_signed(r.low)} to {_signed(r.high)}); {r.wins} wins, {r.ties} ties, {r.losses} losses of "
        f"{r.n} prompts" + (f"; {r.invalid} invalid verdicts left out" if r.invalid else "") + "."
    )


_METHOD = """## Method

Each prompt is answered once per arm (temperature, max_tokens and seed as configured), the arm forced with
`X-Aligngate-Arm` and the trace on. Each judge compares an arm's answer with the baseline's answer to the same
prompt and says win, tie or lose from the arm's side. The LLM judge is asked twice, with the arm's answer shown
first and then second; a verdict that changes with the order is a tie, and a pair where either order gives no
parsable verdict is invalid (left out of n). A reward model scores each (prompt, answer) as a finished
assistant turn; a difference within its tie margin is a tie. Identical answers are a tie without a judge.
ΔWR = win rate - lose rate = the mean over prompts of +1 (win), 0 (tie), -1 (lose); its 95% interval is a
percentile bootstrap over prompts (2,000 resamples, seed 0). Refusals are matched by the patterns listed in
the README; the edit distance is word-level Levenshtein divided by the longer word count.
"""


def render_markdown(report: EvalReport, png_note: str | None = None) -> str:
    sets = ", ".join(f"{name} ({n} prompts)" for name, n in report.prompts.items())
    parts = [
        f"# {report.title}",
        "",
        f"Target: {report.target}. Baseline: `{report.baseline}`. Prompt sets: {sets}. "
        f"Judges: {', '.join(report.judges) or 'none'}.",
        "",
        f"Answers: {report.answers_generated} generated, {report.answers_reused} reused from earlier runs, "
        f"{report.answers_failed} failed. Judgements: {report.judgements_made} made, {report.judgements_reused} "
        f"reused, {report.unjudged} pairs unjudged.",
        "",
    ]
    if report.rows:
        parts += ["## Pairwise", "", _markdown(_PAIR_HEAD, [_pair_cells(r) for r in report.rows]), ""]
        parts += [_sentence(r) for r in report.rows] + [""]
    parts += ["## Without a judge", "", _markdown(_MEASURE_HEAD, [_measure_cells(m) for m in report.measures]), ""]
    skips = [
        f"- {m.set}, {m.arm}: "
        + "; ".join(
            f"{helper} kept its input {', '.join(f'{k} x{v}' for k, v in counts.items())}"
            for helper, counts in (("rewriter", m.rewriter_skips), ("aligner", m.aligner_skips))
            if counts
        )
        for m in report.measures
        if m.rewriter_skips or m.aligner_skips
    ]
    if skips:
        parts += ["Helper skip reasons:", "", *skips, ""]
    parts += ["![ΔWR per comparison and latency per arm](report.png)" if png_note is None else f"_{png_note}_", ""]
    parts.append(_METHOD)
    return "\n".join(parts)


_PNG_MISSING = "report.png was not written: matplotlib is not installed (`pip install matplotlib`)."


def write_png(report: EvalReport, path: Path) -> str | None:
    """ΔWR with its interval per comparison, and latency p50/p95 per set and arm. None when written."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return _PNG_MISSING
    rows = [r for r in report.rows if r.delta_wr is not None]
    fig = Figure(figsize=(12.0, max(3.5, 0.45 * max(len(rows), len(report.measures)) + 1.5)), layout="constrained")
    ax_wr, ax_lat = fig.subplots(1, 2)
    if rows:
        ys = list(range(len(rows)))
        deltas = [100 * (r.delta_wr or 0.0) for r in rows]
        ax_wr.barh(ys, deltas, color=["#55A868" if d >= 0 else "#C44E52" for d in deltas])
        ax_wr.errorbar(
            deltas,
            ys,
            xerr=[
                [d - 100 * (r.low or 0.0) for d, r in zip(deltas, rows, strict=True)],
                [100 * (r.high or 0.0) - d for d, r in zip(deltas, rows, strict=True)],
            ],
            fmt="none",
            ecolor="black",
            capsize=4,
        )
        ax_wr.set_yticks(ys, [f"{r.set}: {r.arm} ({r.judge})" for r in rows], fontsize=8)
        ax_wr.axvline(0, color="black", linewidth=0.8)
        ax_wr.set_xlim(-100, 100)
    else:
        ax_wr.text(0.5, 0.5, "no judge", ha="center", va="center", transform=ax_wr.transAxes)
    ax_wr.set_xlabel(f"ΔWR vs {report.baseline} (points, 95% bootstrap CI)")
    ys = list(range(len(report.measures)))
    height = 0.38
    ax_lat.barh(
        [y - height / 2 for y in ys],
        [m.latency_p50_ms or 0.0 for m in report.measures],
        height,
        label="p50",
        color="#4C72B0",
    )
    ax_lat.barh(
        [y + height / 2 for y in ys],
        [m.latency_p95_ms or 0.0 for m in report.measures],
        height,
        label="p95",
        color="#DD8452",
    )
    ax_lat.set_yticks(ys, [f"{m.set}: {m.arm}" for m in report.measures], fontsize=8)
    ax_lat.set_xlabel("latency (ms)")
    ax_lat.legend()
    fig.suptitle(report.title)
    fig.savefig(path, dpi=110, format="png")
    return None


def write_report(report: EvalReport, out_dir: Path) -> ReportFiles:
    """Write ``report.png`` (when matplotlib is there) and ``report.md`` into ``out_dir`` (created)."""
    return write_report_files(
        out_dir, lambda png: write_png(report, png), lambda note: render_markdown(report, note)
    )


def _rounded(value: Any) -> Any:
    return round(value, 4) if isinstance(value, float) else value


def headline(report: EvalReport, out_dir: Path) -> dict[str, Any]:
    """The last stdout line: what was evaluated and every comparison's numbers."""
    return {
        "command": "eval",
        "out": str(out_dir),
        "baseline": report.baseline,
        "prompts": report.prompts,
        "answers": {
            "generated": report.answers_generated,
            "reused": report.answers_reused,
            "failed": report.answers_failed,
        },
        "judgements": {"made": report.judgements_made, "reused": report.judgements_reused, "unjudged": report.unjudged},
        "results": [{k: _rounded(v) for k, v in asdict(r).items()} for r in report.rows],
        "measures": [
            {
                k: _rounded(getattr(m, k))
                for k in (
                    "set",
                    "arm",
                    "answers",
                    "failed",
                    "mean_words",
                    "refusal_rate",
                    "unchanged_share",
                    "mean_edit_distance",
                    "rewritten_share",
                    "latency_p50_ms",
                    "latency_p95_ms",
                )
            }
            for m in report.measures
        ],
    }

