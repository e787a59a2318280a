"""Statistics shared by the A/B report (``aligngate ab report``), ``aligngate eval`` and ``train.evaluate``.

Pure Python (``math.erf``/``erfc`` for the normal distribution, ``random.Random`` for resampling), so every layer
may use it without pulling in numpy or scipy:

* :func:`wilson_interval`: the Wilson score interval of a proportion (stays inside [0, 1], honest at small counts);
* :func:`two_proportion_test`: two-sided two-proportion z-test with the Wald interval of the difference;
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
    "ProportionTest",
    "bootstrap_mean_interval",
    "normal_cdf",
    "percentile",
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
    """Two-sided two-proportion z-test of p1 = p2, and the Wald interval of p1 - p2.

    z = (p1 - p2) / sqrt(p(1-p)(1/n1 + 1/n2)) with the pooled p = (s1 + s2) / (n1 + n2); p-value = 2(1 - Φ(|z|)).
    Interval: (p1 - p2) ± z_c·sqrt(p1(1-p1)/n1 + p2(1-p2)/n2). When both arms are all thumbs-up (or all down) the
    statistic is undefined and the p-value is 1 (no evidence of a difference).
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
    half = z_value(confidence) * math.sqrt(p1 * (1 - p1) / n1 + p2 * (1 - p2) / n2)
    return ProportionTest(difference, difference - half, difference + half, z, p_value)


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
