"""core/stats.py against hand-computed values (and scipy, when installed, as a cross-check)."""

from __future__ import annotations

import math

import pytest

from core.stats import normal_cdf, percentile, two_proportion_test, wilson_interval, z_value
from gateway.report.ab import format_p

Z = 1.959963984540054  # Φ⁻¹(0.975)


def test_normal_cdf_and_critical_value() -> None:
    assert normal_cdf(0.0) == 0.5
    assert normal_cdf(1.959963984540054) == pytest.approx(0.975, abs=1e-12)
    assert normal_cdf(-1.0) == pytest.approx(0.158655254, abs=1e-9)  # table value
    assert z_value(0.95) == pytest.approx(Z, abs=1e-9)
    assert z_value(0.99) == pytest.approx(2.5758293, abs=1e-6)
    with pytest.raises(ValueError):
        z_value(1.0)


def test_wilson_interval_of_8_out_of_10() -> None:
    # p = 0.8, n = 10, z² = 3.841459:
    #   denominator = 1 + z²/n              = 1.3841459
    #   center      = (0.8 + z²/20) / 1.3841459 = (0.8 + 0.1920729) / 1.3841459 = 0.7167401
    #   half        = z·sqrt(0.8·0.2/10 + z²/400) / 1.3841459 = 1.959964·sqrt(0.016 + 0.0096036) / 1.3841459
    #               = 1.959964 · 0.1600113 / 1.3841459 = 0.2265777
    #   → (0.4901625, 0.9433178)
    low, high = wilson_interval(8, 10)
    assert low == pytest.approx(0.4901625, abs=1e-6)
    assert high == pytest.approx(0.9433178, abs=1e-6)


def test_wilson_interval_edges() -> None:
    # 3/10: center (0.3 + 0.1920729) / 1.3841459 = 0.3555066, half 1.959964·sqrt(0.021 + 0.0096036) / 1.3841459
    # = 0.2477153 → (0.1077913, 0.6032219)
    assert wilson_interval(3, 10) == pytest.approx((0.1077913, 0.6032219), abs=1e-6)
    # 0/10: the lower bound is exactly 0, the upper z²/n / (1 + z²/n) = 0.3841459 / 1.3841459 = 0.2775328
    low, high = wilson_interval(0, 10)
    assert low == 0.0
    assert high == pytest.approx(0.2775328, abs=1e-6)
    assert wilson_interval(10, 10) == pytest.approx((1 - 0.2775328, 1.0), abs=1e-6)
    assert wilson_interval(10, 10)[1] == 1.0
    with pytest.raises(ValueError):
        wilson_interval(0, 0)
    with pytest.raises(ValueError):
        wilson_interval(11, 10)


def test_two_proportion_z_test_textbook_counts() -> None:
    # 45/100 vs 30/100: pooled p = 75/200 = 0.375; se = sqrt(0.375·0.625·(1/100 + 1/100)) = sqrt(0.0046875)
    # = 0.0684653; z = 0.15 / 0.0684653 = 2.1908902; p = 2·(1 - Φ(2.1908902)) = 2·0.0142299 = 0.0284597.
    # Wald interval: 0.15 ± 1.959964·sqrt(0.45·0.55/100 + 0.3·0.7/100) = 0.15 ± 1.959964·0.0665207
    # = (0.0174305, 0.2825695)
    t = two_proportion_test(45, 100, 30, 100)
    assert t.difference == pytest.approx(0.15)
    assert t.z == pytest.approx(2.1908902, abs=1e-6)
    assert t.p_value == pytest.approx(0.0284597, abs=1e-6)
    assert (t.low, t.high) == pytest.approx((0.0174305, 0.2825695), abs=1e-6)


def test_two_proportion_z_test_small_counts_and_symmetry() -> None:
    # 8/10 vs 3/10: pooled p = 11/20 = 0.55; se = sqrt(0.55·0.45·0.2) = sqrt(0.0495) = 0.2224860; z = 0.5 /
    # 0.2224860 = 2.2473329; p = 2·(1 - Φ(2.2473329)) = 0.0246188. Interval: 0.5 ± 1.959964·sqrt(0.016 + 0.021)
    # = 0.5 ± 0.3770066 = (0.1229934, 0.8770066)
    t = two_proportion_test(8, 10, 3, 10)
    assert t.z == pytest.approx(2.2473329, abs=1e-6)
    assert round(t.p_value, 3) == 0.025
    assert t.p_value == pytest.approx(0.0246188, abs=1e-6)
    assert (t.low, t.high) == pytest.approx((0.1229934, 0.8770066), abs=1e-6)
    mirrored = two_proportion_test(3, 10, 8, 10)
    assert mirrored.difference == pytest.approx(-0.5)
    assert mirrored.p_value == pytest.approx(t.p_value)


def test_two_proportion_z_test_degenerate_cases() -> None:
    same = two_proportion_test(10, 10, 7, 7)  # both all thumbs-up: no evidence of any difference
    assert (same.difference, same.z, same.p_value) == (0.0, 0.0, 1.0)
    # z = 1 / sqrt(0.5·0.5·(2/200)) = 20: 1 - Φ(20) would round to 0; erfc keeps the tail (2·2.75e-89)
    far = two_proportion_test(200, 200, 0, 200)
    assert far.z == pytest.approx(20.0)
    assert far.p_value == pytest.approx(5.5084e-89, rel=1e-3)
    assert format_p(far.p_value) == "< 0.001" and format_p(0.0246) == "0.025"
    with pytest.raises(ValueError):
        two_proportion_test(1, 0, 1, 2)


def test_percentile_interpolates_linearly() -> None:
    values = [100.0 * i for i in range(1, 11)]  # 100 .. 1000
    # rank = (n - 1)·q: p50 → 4.5 → 500 + 0.5·100 = 550; p95 → 8.55 → 900 + 0.55·100 = 955
    assert percentile(values, 50) == pytest.approx(550.0)
    assert percentile(reversed(values), 95) == pytest.approx(955.0)
    assert percentile([7.0], 95) == 7.0
    assert percentile([], 50) is None
    assert percentile([1.0, 2.0], 0) == 1.0
    assert percentile([1.0, 2.0], 100) == 2.0


def test_cross_check_against_scipy() -> None:
    stats = pytest.importorskip("scipy.stats")
    for s1, n1, s2, n2 in [(8, 10, 3, 10), (45, 100, 30, 100), (120, 400, 100, 410), (3, 7, 5, 9)]:
        t = two_proportion_test(s1, n1, s2, n2)
        assert t.p_value == pytest.approx(2 * stats.norm.sf(abs(t.z)), rel=1e-9)
        # the two-sided z-test is the chi-square test of the 2x2 table without continuity correction
        chi2 = stats.chi2_contingency([[s1, n1 - s1], [s2, n2 - s2]], correction=False)
        assert t.p_value == pytest.approx(chi2.pvalue, rel=1e-6)
        assert t.z**2 == pytest.approx(chi2.statistic, rel=1e-9)
    for s, n in [(8, 10), (0, 5), (37, 120)]:
        ci = stats.binomtest(s, n).proportion_ci(confidence_level=0.95, method="wilson")
        assert wilson_interval(s, n) == pytest.approx((ci.low, ci.high), abs=1e-9)
    assert math.isclose(z_value(0.9), stats.norm.ppf(0.95), rel_tol=1e-9)


def test_bootstrap_interval_of_a_mean() -> None:
    from core.stats import bootstrap_mean_interval

    values = [1.0] * 30 + [0.0] * 50 + [-1.0] * 20  # ΔWR = 0.10
    low, high = bootstrap_mean_interval(values, resamples=4000, seed=1)
    # the normal approximation: sd = sqrt(E[x²] - mean²) = sqrt(0.5 - 0.01) = 0.7, se = 0.07
    assert low < 0.10 < high
    assert low == pytest.approx(0.10 - 1.96 * 0.07, abs=0.025)
    assert high == pytest.approx(0.10 + 1.96 * 0.07, abs=0.025)
    assert bootstrap_mean_interval(values, resamples=4000, seed=1) == (low, high)  # seeded: reproducible
    assert bootstrap_mean_interval([0.5] * 7) == (0.5, 0.5)
    with pytest.raises(ValueError):
        bootstrap_mean_interval([])
