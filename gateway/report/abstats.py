"""The figures of ``aligngate ab report``: :func:`summarize` turns a :class:`~gateway.report.source.Snapshot` of one
experiment into an :class:`ABReport` (dataclasses only). Rendering is :mod:`gateway.report.ab` (table, Markdown,
chart) and :mod:`gateway.report.abjson` (the JSON form); the statistics themselves are :mod:`core.stats`.

Per arm (rows of ``requests`` of one experiment; forced-arm rows left out unless asked for, because a client
that picks its arm is not randomised):

* **requests**, **errors** (status >= 400, or a response that failed after it started: ``outcome`` set) with
  the Wilson interval of the error rate;
* **latency p50 / p95** of the requests without error, **rewriter / aligner p50** where that helper ran
  (percentiles interpolate linearly, numpy's default);
* **feedback**: requests with a rating, each counted once by its **latest** rating; the **thumbs-up rate** with
  its Wilson interval;
* **refusal rate** of the answers served (``final_answer``; :func:`core.refusal.is_refusal`), over the requests
  whose answer text the store kept; unknown (None) when it kept none (``store.log_bodies: false``);
* **aligner changed** (arms that align): the share of answers where the aligner's answer differs from the
  backend's (``raw_answer != final_answer``), over those with both texts; None for other arms or without texts.

Against ``control`` (each other arm):

* **thumbs-up difference** in points with **Newcombe's hybrid score interval** (:func:`core.stats.newcombe_interval`)
  and the p-value of the two-sided two-proportion z-test (pooled standard error); the **Holm-adjusted** p-value
  over the arms compared with control; and the **always-valid** interval and p-value
  (:func:`core.stats.always_valid_difference`, tuned for ``planned_n`` ratings per arm), which stay valid however
  often the report is looked at. ``rough``: fewer than 5 expected 👍 or 👎 in an arm (normal approximation rough).
* **guardrails**: latency p50/p95 difference (ms, no test); error-rate and refusal-rate differences with the same
  interval, test and Holm adjustment (each metric is its own family).

The **sample-ratio-mismatch check** (:class:`SRMCheck`) compares the non-forced requests per arm with the configured
weights (:class:`ConfiguredExperiment`: ``experiment.name`` and ``experiment.arms`` of the gateway config; only when
given, and only for the experiment of that name): Pearson's
χ² goodness of fit; ``mismatch`` when p < :data:`SRM_ALPHA` (0.001, as GrowthBook, Statsig and Eppo flag it). An arm
with requests but weight 0 is a mismatch outright.

**Pairwise preferences** (``Snapshot.preferences``, :class:`Pairwise`): per pair of arms (each arm against control,
and any pair with comparisons; the arm earlier in the canonical order is the baseline), wins / ties / losses of the
first arm, the **win rate** (wins + ½ ties) / n with a Wilson interval on that fractional count (ties make the true
variance smaller than a coin's, so it is, if anything, conservative), and the exact **sign test** p-value (ties left
out). Comparisons of an arm with itself are left out. **Position bias** (:class:`PositionBias`): of the non-tie
choices whose left side is known, the share that went to the left, with its Wilson interval and a sign test of ½.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from core.refusal import is_refusal
from core.stats import (
    AlwaysValid,
    ProportionTest,
    always_valid_difference,
    chi_square_goodness_of_fit,
    holm,
    percentile,
    sign_test,
    two_proportion_test,
    wilson_interval,
)
from gateway.config import ARMS, Arm
from gateway.report import DEFAULT_PLANNED_N
from gateway.report.source import PreferenceRecord, RequestRecord, Snapshot

__all__ = [
    "CONTROL",
    "DEFAULT_PLANNED_N",
    "SRM_ALPHA",
    "ABReport",
    "ArmStats",
    "Comparison",
    "ConfiguredExperiment",
    "Guardrail",
    "Pairwise",
    "PositionBias",
    "Rate",
    "SRMArm",
    "SRMCheck",
    "arm_order",
    "arm_stats",
    "pairwise",
    "position_bias",
    "srm_check",
    "summarize",
]

CONTROL = "control"
#: The p-value below which the SRM check flags a mismatch (the industry's threshold).
SRM_ALPHA = 0.001
#: Below this many expected successes or failures in an arm, the normal approximation is rough.
_MIN_EXPECTED = 5.0


@dataclass(frozen=True, slots=True)
class Rate:
    """``count`` of ``n`` with the Wilson interval (low, high) of ``count / n``; ``count`` may be fractional."""

    count: float
    n: int
    low: float
    high: float

    @property
    def value(self) -> float:
        return self.count / self.n


def _rate(count: float, n: int, confidence: float) -> Rate | None:
    if n == 0:
        return None
    low, high = wilson_interval(count, n, confidence)
    return Rate(count, n, low, high)


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
    #: Wilson interval of ``errors / requests``.
    error_interval: tuple[float, float] | None = None
    #: Refusals among the answers whose text the store kept (None: no answer text known).
    refusals: Rate | None = None
    #: Whether the arm runs the aligner.
    aligns: bool = False
    #: Answers the aligner changed, of those with both texts (None: not an aligning arm, or no texts).
    changed: Rate | None = None

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    @property
    def up_rate(self) -> float | None:
        return self.up / self.rated if self.rated else None


@dataclass(frozen=True, slots=True)
class Comparison:
    """An arm's rate against control's: the test (difference, Newcombe interval, z, p), whether too few counts
    make its normal approximation rough, the Holm-adjusted p-value, and (thumbs-up only) the always-valid result."""

    arm: str
    test: ProportionTest
    rough: bool
    p_holm: float = 1.0
    always_valid: AlwaysValid | None = None


@dataclass(frozen=True, slots=True)
class Guardrail:
    """An arm against control on what must not get worse: latency (ms, arm - control), errors, refusals."""

    arm: str
    latency_p50_delta: float | None
    latency_p95_delta: float | None
    errors: Comparison | None
    refusals: Comparison | None


@dataclass(frozen=True, slots=True)
class ConfiguredExperiment:
    """What the gateway config says of an experiment: its name and its arms' weights (``experiment.arms``)."""

    name: str
    weights: Mapping[str, float]


@dataclass(frozen=True, slots=True)
class SRMArm:
    arm: str
    observed: int
    #: The configured share (weight / sum of weights); 0 for an arm that is not configured.
    expected_share: float


@dataclass(frozen=True, slots=True)
class SRMCheck:
    """``status``: ``ok``, ``mismatch`` (p < :data:`SRM_ALPHA`) or ``not_run`` (``reason`` says why)."""

    status: str
    reason: str | None = None
    arms: tuple[SRMArm, ...] = ()
    statistic: float | None = None
    df: int | None = None
    p_value: float | None = None


@dataclass(frozen=True, slots=True)
class Pairwise:
    """``arm`` against ``baseline`` in people's pairwise preferences: ``arm``'s wins, ties, losses."""

    arm: str
    baseline: str
    wins: int
    ties: int
    losses: int
    #: (wins + ½ ties) / n with its Wilson interval; None without comparisons.
    win_rate: Rate | None
    #: Exact sign test of wins against losses (ties left out).
    p_value: float

    @property
    def n(self) -> int:
        return self.wins + self.ties + self.losses


@dataclass(frozen=True, slots=True)
class PositionBias:
    """Of the non-tie choices whose left side is known, how many went to the left one."""

    left: Rate
    p_value: float


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
    guardrails: dict[str, Guardrail] = field(default_factory=dict)
    srm: SRMCheck = field(default_factory=lambda: SRMCheck("not_run", "no configured weights"))
    pairwise: tuple[Pairwise, ...] = ()
    position_bias: PositionBias | None = None
    planned_n: int = DEFAULT_PLANNED_N

    def arm(self, name: str) -> ArmStats | None:
        return next((a for a in self.arms if a.arm == name), None)


def arm_order(arms: Iterable[str]) -> list[str]:
    """The gateway's arms in their usual order (control first), then any other arm by name."""
    present = set(arms)
    return [a for a in ARMS if a in present] + sorted(present - set(ARMS))


def _aligns(arm: str) -> bool:
    return arm in set(ARMS) and Arm(arm).aligns


def arm_stats(snapshot: Snapshot, confidence: float = 0.95) -> list[ArmStats]:
    """Per-arm figures of the snapshot's requests (see the module docstring), arms in the canonical order."""
    by_arm: dict[str, list[RequestRecord]] = {}
    for rec in snapshot.requests:
        by_arm.setdefault(rec.arm, []).append(rec)
    out: list[ArmStats] = []
    for arm in arm_order(by_arm):
        recs = by_arm[arm]
        ok = [r for r in recs if r.ok]
        ratings = [snapshot.feedback[r.id].rating for r in recs if r.id in snapshot.feedback]
        up = sum(1 for rating in ratings if rating == 1)
        answers = [r.final_answer for r in ok if r.final_answer is not None]
        both = [r for r in ok if r.raw_answer is not None and r.final_answer is not None]
        aligns = _aligns(arm)
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
            error_interval=wilson_interval(len(recs) - len(ok), len(recs), confidence) if recs else None,
            refusals=_rate(sum(1 for text in answers if is_refusal(text)), len(answers), confidence),
            aligns=aligns,
            changed=_rate(sum(1 for r in both if r.raw_answer != r.final_answer), len(both), confidence)
            if aligns else None,
        ))
    return out


def _rough(s1: int, n1: int, s2: int, n2: int) -> bool:
    pooled = (s1 + s2) / (n1 + n2)
    return any(min(n * pooled, n * (1 - pooled)) < _MIN_EXPECTED for n in (n1, n2))


def _compare(
    pairs: Mapping[str, tuple[int, int, int, int]], confidence: float, planned_n: int | None = None
) -> dict[str, Comparison]:
    """Each arm's (s1, n1) against control's (s2, n2), Holm-adjusted over the arms given."""
    raw = {
        arm: Comparison(
            arm,
            two_proportion_test(s1, n1, s2, n2, confidence),
            _rough(s1, n1, s2, n2),
            always_valid=always_valid_difference(s1, n1, s2, n2, confidence, planned_n) if planned_n else None,
        )
        for arm, (s1, n1, s2, n2) in pairs.items()
    }
    adjusted = holm([c.test.p_value for c in raw.values()])
    return {arm: replace(c, p_holm=p) for (arm, c), p in zip(raw.items(), adjusted, strict=True)}


def _guardrails(arms: Sequence[ArmStats], control: ArmStats, confidence: float) -> dict[str, Guardrail]:
    others = [a for a in arms if a is not control]
    errors = _compare(
        {a.arm: (a.errors, a.requests, control.errors, control.requests) for a in others}, confidence
    )
    c_ref = control.refusals
    refusals = _compare(
        {
            a.arm: (int(a.refusals.count), a.refusals.n, int(c_ref.count), c_ref.n)
            for a in others
            if a.refusals is not None and c_ref is not None
        },
        confidence,
    )

    def delta(x: float | None, y: float | None) -> float | None:
        return None if x is None or y is None else x - y

    return {
        a.arm: Guardrail(
            a.arm,
            delta(a.latency_p50, control.latency_p50),
            delta(a.latency_p95, control.latency_p95),
            errors.get(a.arm),
            refusals.get(a.arm),
        )
        for a in others
    }


def srm_check(
    requests: Iterable[RequestRecord], experiment: str, configured: ConfiguredExperiment | None
) -> SRMCheck:
    """The sample-ratio-mismatch check of the non-forced ``requests`` of ``experiment`` against the configured
    weights (see the module docstring); ``not_run`` without them, when they belong to another experiment, or
    without non-forced requests."""
    if configured is None:
        return SRMCheck("not_run", "the configured arm weights are unknown (give the gateway config with --config)")
    if configured.name != experiment:
        return SRMCheck("not_run", f"the config's experiment is {configured.name!r}, not {experiment!r}, so its "
                                   "arm weights may not apply")
    weights = configured.weights
    observed: dict[str, int] = {}
    for rec in requests:
        if not rec.arm_forced:
            observed[rec.arm] = observed.get(rec.arm, 0) + 1
    if not observed:
        return SRMCheck("not_run", "no randomised (non-forced) requests")
    total_weight = sum(w for w in weights.values() if w > 0)
    names = arm_order(set(observed) | {a for a, w in weights.items() if w > 0})
    arms = tuple(SRMArm(a, observed.get(a, 0), max(0.0, weights.get(a, 0.0)) / total_weight) for a in names)
    if len(arms) < 2:
        return SRMCheck("not_run", "a single arm is configured: there is no split to check", arms)
    fit = chi_square_goodness_of_fit([a.observed for a in arms], [a.expected_share for a in arms])
    status = "mismatch" if fit.p_value < SRM_ALPHA else "ok"
    return SRMCheck(status, None, arms, fit.statistic, fit.df, fit.p_value)


def pairwise(
    preferences: Sequence[PreferenceRecord], arms: Iterable[str], confidence: float = 0.95
) -> tuple[Pairwise, ...]:
    """Win rates per pair of arms (see the module docstring): each of ``arms`` against control, then any other
    pair with comparisons; in the canonical arm order."""
    counts: dict[tuple[str, str], list[int]] = {}  # (arm, baseline) -> [wins, ties, losses] of arm
    arms = list(arms)
    if CONTROL in arms:
        for a in arms:
            if a != CONTROL:
                counts[(a, CONTROL)] = [0, 0, 0]
    named = {*arms, *(x for p in preferences for x in (p.arm_a, p.arm_b))}
    rank = {name: i for i, name in enumerate(arm_order(named))}
    for p in preferences:
        if p.arm_a == p.arm_b or p.preferred not in ("a", "b", "tie"):
            continue
        arm, baseline = sorted((p.arm_a, p.arm_b), key=lambda x: rank[x], reverse=True)
        tally = counts.setdefault((arm, baseline), [0, 0, 0])
        if p.preferred == "tie":
            tally[1] += 1
        else:
            chosen = p.arm_a if p.preferred == "a" else p.arm_b
            tally[0 if chosen == arm else 2] += 1
    ordered = sorted(counts.items(), key=lambda kv: (rank[kv[0][1]], rank[kv[0][0]]))
    return tuple(
        Pairwise(arm, baseline, wins, ties, losses, _rate(wins + ties / 2, wins + ties + losses, confidence),
                 sign_test(wins, losses))
        for (arm, baseline), (wins, ties, losses) in ordered
    )


def position_bias(preferences: Iterable[PreferenceRecord], confidence: float = 0.95) -> PositionBias | None:
    """Share of non-tie choices that went to the left side, where the left side is known (None: never known)."""
    known = [p for p in preferences if p.left in ("a", "b") and p.preferred in ("a", "b")]
    left = sum(1 for p in known if p.preferred == p.left)
    rate = _rate(left, len(known), confidence)
    return None if rate is None else PositionBias(rate, sign_test(left, len(known) - left))


def summarize(snapshot: Snapshot, *, confidence: float = 0.95, since: float | None = None,
              include_forced: bool = False, configured: ConfiguredExperiment | None = None,
              planned_n: int = DEFAULT_PLANNED_N) -> ABReport:
    """The report of a snapshot of one experiment (``read_store(..., latest_by_default=True)``).

    ``configured``: the gateway config's experiment and arm weights (None: unknown, the SRM check is not run; a
    config of another experiment: not run either).
    ``planned_n``: ratings per arm the always-valid interval is tuned for. Raises ``ValueError`` when the snapshot
    has no requests.
    """
    if not snapshot.requests:
        raise ValueError("no requests to report on")
    arms = arm_stats(snapshot, confidence)
    control = next((a for a in arms if a.arm == CONTROL), None)
    comparisons: dict[str, Comparison] = {}
    guardrails: dict[str, Guardrail] = {}
    if control is not None:
        if control.rated:
            comparisons = _compare(
                {a.arm: (a.up, a.rated, control.up, control.rated) for a in arms if a is not control and a.rated},
                confidence,
                planned_n,
            )
        guardrails = _guardrails(arms, control, confidence)
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
        guardrails=guardrails,
        srm=srm_check(snapshot.requests, experiment, configured),
        pairwise=pairwise(snapshot.preferences, [a.arm for a in arms], confidence),
        position_bias=position_bias(snapshot.preferences, confidence),
        planned_n=planned_n,
    )
