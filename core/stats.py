"""Statistics shared by the A/B report (``aligngate ab report``), ``aligngate eval`` and ``train.evaluate``.

Pure Python (``math.erf``/``erfc`` for the normal distribution, ``random.Random`` for resampling), so every layer
may use it without pulling in numpy or scipy:

* :func:`wilson_interval`: the Wilson score interval of a proportion (stays inside [0, 1], honest at small counts);
* :func:`newcombe_interval`: Newcombe's hybrid score interval of a difference of two proportions (method 10 of
  Newcombe 1998, built from the two Wilson intervals: inside [-1, 1], never zero-width at 0 or n);
* :func:`two_proportion_test`: two-sided two-proportion z-test with the Newcombe interval of the difference;
* :func:`chi2_sf` (via :func:`gamma_q`, the regularized upper incomplete gamma function) and
  :func:`chi_square_goodness_of_fit`: the sample-ratio-mismatch test of observed counts against planned shares;
* :func:`holm`: Holm-Bonferroni step-down adjusted p-values of a family of tests;
* :func:`sign_test`: the exact two-sided binomial test of wins against losses (ties left out);
* :func:`always_valid_difference`: a confidence sequence and always-valid p-value of a difference of two
  proportions (normal mixture; see its docstring for the formula and assumptions);
* :func:`percentile`: linear interpolation between the nearest ranks (numpy's default, R's type 7);
* :func:`bootstrap_mean_interval`: a percentile bootstrap interval of a mean (``aligngate eval``'s ΔWR: the mean
  of per-prompt outcomes +1 win / 0 tie / -1 loss, resampled over prompts).
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from statistics import NormalDist

__all__ = [
    "AlwaysValid",
    "GoodnessOfFit",
    "ProportionTest",
    "always_valid_difference",
    "bootstrap_mean_interval",
    "chi2_sf",
    "chi_square_goodness_of_fit",
    "gamma_q",
    "holm",
    "mixture_tau2",
    "newcombe_interval",
    "normal_cdf",
    "percentile",
    "sign_test",
    "two_proportion_test",
    "wilson_interval",
    "z_value",
]


def normal_cdf(x: float) -> float:
    """Φ(x), the standard normal distribution function."""
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def _normal_sf(x: float) -> float:
    """1 - Φ(x), accurate in the far tail (where 1 - Φ(x) would round to 0)."""
    return 0.5 * math.erfc(x / math.sqrt(2.0))


def z_value(confidence: float = 0.95) -> float:
    """The two-sided critical value: Φ⁻¹(1 - (1 - confidence) / 2), 1.959964 for 95 %."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be between 0 and 1, not {confidence}")
    return NormalDist().inv_cdf(1.0 - (1.0 - confidence) / 2.0)


def wilson_interval(successes: float, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval of a proportion ``successes / n`` (``successes`` may be fractional, e.g. a win
    rate where a tie counts ½)::

        (p + z²/2n ± z·sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n)
    """
    if n <= 0 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n and n > 0, got {successes}/{n}")
    z = z_value(confidence)
    p = successes / n
    z2 = z * z
    denominator = 1.0 + z2 / n
    center = (p + z2 / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denominator
    low = 0.0 if successes == 0 else max(0.0, center - half)  # exact at the edges, not 1e-17 off
    high = 1.0 if successes == n else min(1.0, center + half)
    return low, high


def newcombe_interval(
    successes1: int, n1: int, successes2: int, n2: int, confidence: float = 0.95
) -> tuple[float, float]:
    """Newcombe's hybrid score interval of p1 - p2 (Newcombe 1998, *Statistics in Medicine* 17:873, method 10).

    With (l1, u1) and (l2, u2) the Wilson intervals of p1 and p2::

        low  = (p1 - p2) - sqrt((p1 - l1)² + (u2 - p2)²)
        high = (p1 - p2) + sqrt((u1 - p1)² + (p2 - l2)²)

    Unlike the Wald interval it is never zero-width at 0 or n (0/1 against 1/1 gives -1 to +0.12, not -1 to -1)
    and stays inside [-1, 1]; its coverage is close to nominal at small counts.
    """
    l1, u1 = wilson_interval(successes1, n1, confidence)
    l2, u2 = wilson_interval(successes2, n2, confidence)
    p1, p2 = successes1 / n1, successes2 / n2
    difference = p1 - p2
    low = difference - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)
    high = difference + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
    return max(-1.0, low), min(1.0, high)


@dataclass(frozen=True, slots=True)
class ProportionTest:
    """Arm 1 against arm 2: ``difference`` = p1 - p2, its confidence interval, the z statistic, the p-value."""

    difference: float
    low: float
    high: float
    z: float
    p_value: float


def two_proportion_test(
    successes1: int, n1: int, successes2: int, n2: int, confidence: float = 0.95
) -> ProportionTest:
    """Two-sided two-proportion z-test of p1 = p2, and Newcombe's interval of p1 - p2 (:func:`newcombe_interval`).

    z = (p1 - p2) / sqrt(p(1-p)(1/n1 + 1/n2)) with the pooled p = (s1 + s2) / (n1 + n2); p-value = 2(1 - Φ(|z|)).
    When both arms are all thumbs-up (or all down) the statistic is undefined and the p-value is 1 (no evidence
    of a difference).
    """
    for s, n in ((successes1, n1), (successes2, n2)):
        if n <= 0 or not 0 <= s <= n:
            raise ValueError(f"need 0 <= successes <= n and n > 0, got {s}/{n}")
    p1, p2 = successes1 / n1, successes2 / n2
    difference = p1 - p2
    pooled = (successes1 + successes2) / (n1 + n2)
    se_pooled = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if se_pooled == 0.0:
        z, p_value = 0.0, 1.0
    else:
        z = difference / se_pooled
        p_value = min(1.0, 2.0 * _normal_sf(abs(z)))
    low, high = newcombe_interval(successes1, n1, successes2, n2, confidence)
    return ProportionTest(difference, low, high, z, p_value)


# ------------------------------------------------------------------------------------------------- chi-square

_GAMMA_EPS = 1e-15
_GAMMA_ITERATIONS = 10_000


def gamma_q(a: float, x: float) -> float:
    """Q(a, x) = Γ(a, x) / Γ(a), the regularized upper incomplete gamma function (a > 0, x >= 0).

    The series of P(a, x) below x < a + 1, the continued fraction of Q(a, x) (modified Lentz) above, as in
    *Numerical Recipes* §6.2; relative accuracy about 1e-14.
    """
    if a <= 0 or x < 0:
        raise ValueError(f"need a > 0 and x >= 0, got a={a}, x={x}")
    if x == 0:
        return 1.0
    log_prefix = a * math.log(x) - x - math.lgamma(a)
    if x < a + 1:  # P(a, x) = x^a e^-x / Γ(a+1) · Σ x^n / ((a+1)...(a+n))
        term = total = 1.0 / a
        denominator = a
        for _ in range(_GAMMA_ITERATIONS):
            denominator += 1
            term *= x / denominator
            total += term
            if abs(term) < abs(total) * _GAMMA_EPS:
                break
        return max(0.0, 1.0 - total * math.exp(log_prefix))
    tiny = 1e-300  # Q(a, x) = x^a e^-x / Γ(a) · 1/(x+1-a- 1·(1-a)/(x+3-a- 2·(2-a)/(x+5-a- ...)))
    b = x + 1 - a
    c = 1 / tiny
    d = 1 / b
    h = d
    for i in range(1, _GAMMA_ITERATIONS):
        an = -i * (i - a)
        b += 2
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1 / d
        delta = d * c
        h *= delta
        if abs(delta - 1) < _GAMMA_EPS:
            break
    return min(1.0, math.exp(log_prefix) * h)


def chi2_sf(x: float, df: int) -> float:
    """P(X >= x) for X ~ χ² with ``df`` degrees of freedom: Q(df/2, x/2)."""
    if df < 1:
        raise ValueError(f"need at least 1 degree of freedom, not {df}")
    return gamma_q(df / 2.0, max(0.0, x) / 2.0)


@dataclass(frozen=True, slots=True)
class GoodnessOfFit:
    """Pearson's χ² of observed counts against expected ones: the statistic, its degrees of freedom, p."""

    statistic: float
    df: int
    p_value: float
    expected: tuple[float, ...]


def chi_square_goodness_of_fit(observed: Sequence[int], shares: Sequence[float]) -> GoodnessOfFit:
    """Pearson's χ² goodness-of-fit test of ``observed`` counts against planned ``shares`` (normalised to 1).

    χ² = Σ (O - E)² / E with E = N·share, df = (categories with a positive share) - 1. A count in a category
    whose share is 0 is impossible under the plan: χ² is infinite and p = 0. With a single category of positive
    share (df = 0) nothing can differ: χ² = 0, p = 1.
    """
    if len(observed) != len(shares) or not observed:
        raise ValueError("need one share per observed count")
    if any(s < 0 for s in shares) or not any(shares) or any(o < 0 for o in observed):
        raise ValueError("shares must be >= 0 with at least one positive, counts >= 0")
    total_share = math.fsum(shares)
    n = sum(observed)
    expected = tuple(n * s / total_share for s in shares)
    if any(o > 0 and s == 0 for o, s in zip(observed, shares, strict=True)):
        return GoodnessOfFit(math.inf, max(1, sum(1 for s in shares if s > 0) - 1), 0.0, expected)
    df = sum(1 for s in shares if s > 0) - 1
    if df == 0 or n == 0:
        return GoodnessOfFit(0.0, df, 1.0, expected)
    statistic = math.fsum((o - e) ** 2 / e for o, e in zip(observed, expected, strict=True) if e > 0)
    return GoodnessOfFit(statistic, df, chi2_sf(statistic, df), expected)


# ------------------------------------------------------------------------------------------------- several tests


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni step-down adjusted p-values, in the order given.

    Sorted ascending p(1) <= ... <= p(m): adjusted p(i) = max over j <= i of min(1, (m - j + 1)·p(j)). Rejecting
    where the adjusted p < alpha controls the family-wise error rate at alpha for any dependence between the tests.
    """
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def sign_test(wins: int, losses: int) -> float:
    """The exact two-sided sign test of ``wins`` against ``losses`` (ties already left out): under no preference
    each is Binomial(n, ½), p = min(1, 2·P(X <= min(wins, losses))). No comparisons: p = 1."""
    if wins < 0 or losses < 0:
        raise ValueError(f"counts must be >= 0, got {wins}, {losses}")
    n = wins + losses
    if n == 0:
        return 1.0
    k = min(wins, losses)
    log_half_n = n * math.log(2.0)
    log_n_fact = math.lgamma(n + 1)
    tail = math.fsum(
        math.exp(log_n_fact - math.lgamma(i + 1) - math.lgamma(n - i + 1) - log_half_n) for i in range(k + 1)
    )
    return min(1.0, 2.0 * tail)


def percentile(values: Iterable[float], q: float) -> float | None:
    """The ``q``-th percentile (0-100) by linear interpolation between the nearest ranks; None when empty."""
    ordered = sorted(values)
    if not ordered:
        return None
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile must be within 0..100, not {q}")
    rank = (len(ordered) - 1) * q / 100.0
    below = math.floor(rank)
    above = min(below + 1, len(ordered) - 1)
    return ordered[below] + (ordered[above] - ordered[below]) * (rank - below)


def bootstrap_mean_interval(
    values: Sequence[float], confidence: float = 0.95, resamples: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """The percentile bootstrap interval of ``mean(values)``: ``resamples`` resamples of ``len(values)`` drawn with
    replacement (seeded, so a report is reproducible), and the ``(1 - confidence) / 2`` and ``(1 + confidence) / 2``
    percentiles of their means. One value, or all equal: a zero-width interval at the mean."""
    n = len(values)
    if n == 0:
        raise ValueError("need at least one value")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be between 0 and 1, not {confidence}")
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, not {resamples}")
    rng = random.Random(seed)
    data = list(values)
    means = [math.fsum(rng.choices(data, k=n)) / n for _ in range(resamples)]
    alpha = (1.0 - confidence) / 2.0
    low = percentile(means, 100.0 * alpha)
    high = percentile(means, 100.0 * (1.0 - alpha))
    assert low is not None and high is not None
    return low, high


# ------------------------------------------------------------------------------------------------- always valid


@dataclass(frozen=True, slots=True)
class AlwaysValid:
    """A confidence sequence of p1 - p2 at the data seen so far, and its always-valid p-value of p1 = p2."""

    difference: float
    low: float
    high: float
    p_value: float
    #: The variance of the normal mixture (fixed by the planned count, not by the data).
    tau2: float


def mixture_tau2(planned_n: int, confidence: float = 0.95) -> float:
    """The mixing variance τ² that makes :func:`always_valid_difference` narrowest when each arm has
    ``planned_n`` observations at a rate of ½ (the largest Bernoulli variance)::

        τ² = V*·(-2 log alpha + log(1 - 2 log alpha)),   V* = ¼·(1/planned_n + 1/planned_n)

    V* is the variance of the difference at the planned count; this is Waudby-Smith et al.'s optimal tuning
    rho² = (-2 log alpha + log(1 - 2 log alpha)) / t* with t* = planned_n, written for the variance of the
    difference (τ² = rho²·σ², V = σ²/t)."""
    if planned_n < 1:
        raise ValueError(f"planned_n must be at least 1, not {planned_n}")
    alpha = 1.0 - confidence
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"confidence must be between 0 and 1, not {confidence}")
    log_alpha = math.log(alpha)
    return (0.5 / planned_n) * (-2.0 * log_alpha + math.log(1.0 - 2.0 * log_alpha))


def always_valid_difference(
    successes1: int, n1: int, successes2: int, n2: int, confidence: float = 0.95, planned_n: int = 1000
) -> AlwaysValid:
    """A confidence sequence and always-valid p-value of p1 - p2: looking at it after every rating, every day,
    is safe; the chance that it *ever* excludes the true difference is at most 1 - ``confidence``.

    The normal-mixture boundary (Robbins 1970), as in the mixture sequential probability ratio test of Johari et
    al. ("Peeking at A/B tests", KDD 2017; Optimizely's and Eppo's always-valid results) and the asymptotic
    confidence sequence of Waudby-Smith et al. ("Time-uniform central limit theory and asymptotic confidence
    sequences", arXiv:2103.06476). With θ̂ = p1 - p2, V its estimated variance and the mixture N(0, τ²) over the
    true difference::

        Λ    = sqrt(V / (V + τ²)) · exp(τ²·θ̂² / (2V(V + τ²)))      (the mixture likelihood ratio against θ = 0)
        CS   = θ̂ ± sqrt(V(V + τ²)/τ² · log((V + τ²) / (V·alpha²)))    (clipped to [-1, 1])
        p    = min(1, 1/Λ)

    Under θ = 0, Λ is (approximately) a nonnegative martingale with mean 1, so by Ville's inequality
    P(Λ ever >= 1/alpha) <= alpha: the p-value may be read at any time and the test stopped whenever; the CS
    excludes 0 exactly when p < alpha. Its half-width² is V·(1 + V/τ²)·(log(1 + τ²/V) + 2·log(1/alpha)) >=
    5.99·V at 95 %, so it is always wider than the fixed-n interval θ̂ ± 1.96·sqrt(V): the price of peeking. The
    smallest p-value seen so far is equally valid (Johari et al. report that running minimum).

    Assumptions: ratings are independent, and each arm's rate is constant over time (a novelty effect or a
    weekly cycle breaks the martingale); V is estimated by plug-in, V = p̃1(1-p̃1)/n1 + p̃2(1-p̃2)/n2 with
    p̃ = (s + 1)/(n + 2) so that an all-👍 start is not taken for certainty; the guarantee is asymptotic (exact in
    the limit of many ratings, as Waudby-Smith et al. prove for plug-in variances), so at a handful of ratings
    the interval is wide rather than exact. τ² = :func:`mixture_tau2` (``planned_n``) must be fixed before the
    data are seen; a different ``planned_n`` moves where the sequence is tightest, not its validity.
    """
    for s, n in ((successes1, n1), (successes2, n2)):
        if n <= 0 or not 0 <= s <= n:
            raise ValueError(f"need 0 <= successes <= n and n > 0, got {s}/{n}")
    alpha = 1.0 - confidence
    tau2 = mixture_tau2(planned_n, confidence)
    difference = successes1 / n1 - successes2 / n2
    q1, q2 = (successes1 + 1) / (n1 + 2), (successes2 + 1) / (n2 + 2)
    variance = q1 * (1 - q1) / n1 + q2 * (1 - q2) / n2
    half = math.sqrt(variance * (variance + tau2) / tau2 * math.log((variance + tau2) / (variance * alpha**2)))
    log_lambda = 0.5 * math.log(variance / (variance + tau2)) + tau2 * difference**2 / (
        2 * variance * (variance + tau2)
    )
    p_value = 1.0 if log_lambda <= 0 else math.exp(-log_lambda)
    return AlwaysValid(difference, max(-1.0, difference - half), min(1.0, difference + half), p_value, tau2)
