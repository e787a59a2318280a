"""core/stats.py against hand-computed values, published worked examples (Newcombe 1998), closed forms and
statistical tables (and scipy, when installed, as a cross-check)."""

from __future__ import annotations

import math
import random
import time

import pytest

from core.stats import (
    always_valid_difference,
    chi2_sf,
    chi_square_goodness_of_fit,
    gamma_q,
    holm,
    mixture_tau2,
    newcombe_interval,
    normal_cdf,
    percentile,
    sign_test,
    two_proportion_test,
    wilson_interval,
    z_value,
)
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
    # Newcombe interval from the Wilson intervals 45/100 = (0.3561454, 0.5475540), 30/100 = (0.2189489, 0.3958485):
    # low = 0.15 - sqrt(0.0938546² + 0.0958485²) = 0.15 - 0.1341478 = 0.0158522;
    # high = 0.15 + sqrt(0.0975540² + 0.0810511²) = 0.15 + 0.1268308 = 0.2768308
    t = two_proportion_test(45, 100, 30, 100)
    assert t.difference == pytest.approx(0.15)
    assert t.z == pytest.approx(2.1908902, abs=1e-6)
    assert t.p_value == pytest.approx(0.0284597, abs=1e-6)
    assert (t.low, t.high) == pytest.approx((0.0158522, 0.2768308), abs=1e-6)


def test_two_proportion_z_test_small_counts_and_symmetry() -> None:
    # 8/10 vs 3/10: pooled p = 11/20 = 0.55; se = sqrt(0.55·0.45·0.2) = sqrt(0.0495) = 0.2224860; z = 0.5 /
    # 0.2224860 = 2.2473329; p = 2·(1 - Φ(2.2473329)) = 0.0246188. Newcombe, from Wilson 8/10 = (0.4901625,
    # 0.9433178) and 3/10 = (0.1077913, 0.6032219): low = 0.5 - sqrt(0.3098375² + 0.3032219²) = 0.0664763,
    # high = 0.5 + sqrt(0.1433178² + 0.1922087²) = 0.7397586
    t = two_proportion_test(8, 10, 3, 10)
    assert t.z == pytest.approx(2.2473329, abs=1e-6)
    assert round(t.p_value, 3) == 0.025
    assert t.p_value == pytest.approx(0.0246188, abs=1e-6)
    assert (t.low, t.high) == pytest.approx((0.0664763, 0.7397586), abs=1e-6)
    mirrored = two_proportion_test(3, 10, 8, 10)
    assert mirrored.difference == pytest.approx(-0.5)
    assert mirrored.p_value == pytest.approx(t.p_value)
    assert (mirrored.low, mirrored.high) == pytest.approx((-0.7397586, -0.0664763), abs=1e-6)


@pytest.mark.parametrize(
    ("counts", "expected"),
    [
        # Newcombe (1998), Statistics in Medicine 17:873-890, Table II, method 10 (score, no continuity correction)
        ((56, 70, 48, 80), (0.0524, 0.3339)),
        ((9, 10, 3, 10), (0.1705, 0.8090)),
        ((6, 7, 2, 7), (0.0582, 0.8062)),
        ((5, 56, 0, 29), (-0.0381, 0.1926)),
    ],
)
def test_newcombe_interval_worked_examples(counts: tuple[int, int, int, int], expected: tuple[float, float]) -> None:
    assert newcombe_interval(*counts) == pytest.approx(expected, abs=5e-5)


def test_newcombe_interval_at_zero_and_n_agrees_with_the_test() -> None:
    # 1 of 1 against 0 of 1: Wilson 1/1 = (0.2065493, 1), 0/1 = (0, 0.7934507); low = 1 - sqrt(0.7934507² +
    # 0.7934507²) = 1 - 1.1221087 = -0.1221087, high = 1 + sqrt(0 + 0) = 1. The Wald interval was (+1, +1),
    # zero-width and contradicting p = 0.157 (z = 1/sqrt(0.5·0.5·2) = √2).
    t = two_proportion_test(1, 1, 0, 1)
    assert t.p_value == pytest.approx(0.1572992, abs=1e-6)
    assert (t.low, t.high) == pytest.approx((-0.1221087, 1.0), abs=1e-6)
    assert t.low < 0 < t.high
    assert newcombe_interval(0, 1, 1, 1) == pytest.approx((-1.0, 0.1221087), abs=1e-6)
    # 0/10 vs 0/20: no difference seen, but the interval is not zero-width: (-0.1611, 0.2775)
    low, high = newcombe_interval(0, 10, 0, 20)
    assert low == pytest.approx(-0.1611, abs=1e-4) and high == pytest.approx(0.2775328, abs=1e-6)


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


def test_incomplete_gamma_and_chi_square_survival() -> None:
    # closed forms: Q(1, x) = e^-x; χ²(2) sf = e^(-x/2); χ²(1) sf = erfc(sqrt(x/2)); χ²(4) sf = e^(-x/2)(1 + x/2)
    assert gamma_q(1.0, 3.0) == pytest.approx(math.exp(-3.0), rel=1e-12)
    assert gamma_q(0.5, 0.1) == pytest.approx(math.erfc(math.sqrt(0.1)), rel=1e-12)  # the series branch
    assert chi2_sf(10.0, 2) == pytest.approx(math.exp(-5.0), rel=1e-12)
    assert chi2_sf(2.5, 1) == pytest.approx(math.erfc(math.sqrt(1.25)), rel=1e-12)
    assert chi2_sf(30.0, 1) == pytest.approx(math.erfc(math.sqrt(15.0)), rel=1e-10)  # far tail: 4.32e-8
    assert chi2_sf(5.0, 4) == pytest.approx(math.exp(-2.5) * 3.5, rel=1e-12)
    # table critical values (Abramowitz & Stegun 26.8): 3.841459 (1 df) and 5.991465 (2 df) at 0.05,
    # 10.827566 (1 df) and 16.266236 (3 df) at 0.001
    assert chi2_sf(3.841459, 1) == pytest.approx(0.05, abs=1e-7)
    assert chi2_sf(5.991465, 2) == pytest.approx(0.05, abs=1e-7)
    assert chi2_sf(10.827566, 1) == pytest.approx(0.001, abs=1e-8)
    assert chi2_sf(16.266236, 3) == pytest.approx(0.001, abs=1e-8)
    assert chi2_sf(0.0, 3) == 1.0
    with pytest.raises(ValueError):
        chi2_sf(1.0, 0)


def test_chi_square_goodness_of_fit() -> None:
    # 5000 vs 5200 planned 50/50: E = 5100 each, χ² = 2·100²/5100 = 3.9215686, p = erfc(sqrt(3.9215686/2)) = 0.0476704
    fit = chi_square_goodness_of_fit([5000, 5200], [1.0, 1.0])
    assert fit.statistic == pytest.approx(3.9215686, abs=1e-6) and fit.df == 1
    assert fit.p_value == pytest.approx(0.0476704, abs=1e-6)
    # 10 000 split 80/20 planned, observed 7900/2100: χ² = 100²/8000 + 100²/2000 = 6.25, p = erfc(sqrt(3.125))
    fit = chi_square_goodness_of_fit([7900, 2100], [0.8, 0.2])
    assert fit.expected == pytest.approx((8000.0, 2000.0))
    assert fit.p_value == pytest.approx(math.erfc(math.sqrt(3.125)), rel=1e-10)
    # three arms 1:1:2 of 400 observed 100/100/200 exactly: χ² = 0, p = 1 (2 df)
    fit = chi_square_goodness_of_fit([100, 100, 200], [1, 1, 2])
    assert (fit.statistic, fit.df, fit.p_value) == (0.0, 2, 1.0)
    # a count where the plan says none: impossible, p = 0
    assert chi_square_goodness_of_fit([10, 1], [1.0, 0.0]).p_value == 0.0
    assert chi_square_goodness_of_fit([10, 0], [1.0, 0.0]).p_value == 1.0  # one arm planned: nothing to compare
    with pytest.raises(ValueError):
        chi_square_goodness_of_fit([1, 2], [1.0])


def test_holm_step_down() -> None:
    # sorted 0.01, 0.03, 0.04 → 3·0.01 = 0.03, 2·0.03 = 0.06, max(0.06, 1·0.04) = 0.06; back in the given order
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert holm([0.02]) == [0.02]  # one test: unchanged
    assert holm([]) == []
    # Holm's (1979) rule: with m = 4 and p = 0.005, 0.011, 0.02, 0.04 → 0.02, 0.033, 0.04, 0.04
    assert holm([0.04, 0.011, 0.005, 0.02]) == pytest.approx([0.04, 0.033, 0.02, 0.04])


def test_sign_test_exact_binomial() -> None:
    # 9 wins, 1 loss: P(X <= 1) = (1 + 10)/1024, two-sided 22/1024 = 0.021484375
    assert sign_test(9, 1) == pytest.approx(22 / 1024, rel=1e-12)
    assert sign_test(1, 9) == pytest.approx(22 / 1024, rel=1e-12)
    # 6 of 6: 2/64 = 0.03125; 5 vs 5: capped at 1; none: 1
    assert sign_test(6, 0) == pytest.approx(0.03125, rel=1e-12)
    assert (sign_test(5, 5), sign_test(0, 0)) == (1.0, 1.0)
    # 60 vs 40: 2·P(X <= 40 | 100, ½) = 0.0568879 (binomial table)
    assert sign_test(60, 40) == pytest.approx(0.0568879, abs=1e-6)


def test_always_valid_interval_contains_the_fixed_n_interval() -> None:
    # τ² for 1000 per arm at 95 %: 0.5/1000·(-2 ln 0.05 + ln(1 - 2 ln 0.05)) = 0.0005·(5.9914645 + 1.9446954)
    assert mixture_tau2(1000) == pytest.approx(0.0005 * 7.9361599, rel=1e-6)
    for counts in [(480, 1000, 450, 1000), (8, 10, 3, 10), (130, 400, 100, 380), (1, 1, 0, 1), (50, 60, 20, 70)]:
        fixed = two_proportion_test(*counts)
        seq = always_valid_difference(*counts, planned_n=1000)
        assert seq.difference == pytest.approx(fixed.difference)
        assert seq.low <= fixed.low and fixed.high <= seq.high, counts
        assert seq.p_value >= fixed.p_value, counts
        assert (seq.low > 0 or seq.high < 0) == (seq.p_value < 0.05)  # the interval and its p-value agree
    # 480/1000 vs 450/1000 by hand: p̃ = 481/1002, 451/1002; V = 0.0002496 + 0.0002476 = 0.0004972;
    # half = sqrt(V(V + τ²)/τ² · ln((V + τ²)/(V·0.0025))) = 0.0676724
    seq = always_valid_difference(480, 1000, 450, 1000)
    assert (seq.low, seq.high) == pytest.approx((0.03 - 0.0676724, 0.03 + 0.0676724), abs=1e-6)
    assert seq.p_value == 1.0  # Λ < 1: no evidence at all yet
    # a clear effect: 600/1000 vs 450/1000 is established even for someone who looked every day
    assert always_valid_difference(600, 1000, 450, 1000).p_value < 0.001


def test_always_valid_p_value_survives_peeking() -> None:
    """Under no difference, checking every 50 pairs up to 2,000: the naive z-test 'finds' a difference in about a
    quarter of the experiments; the always-valid p-value stays below alpha = 5 %."""
    started = time.perf_counter()
    rng = random.Random(17)
    experiments, crossed_sequential, crossed_naive = 200, 0, 0
    for _ in range(experiments):
        s1 = s2 = 0
        sequential = naive = False
        for i in range(1, 2001):
            s1 += rng.random() < 0.3
            s2 += rng.random() < 0.3
            if i % 50 == 0:
                sequential = sequential or always_valid_difference(s1, i, s2, i, planned_n=2000).p_value < 0.05
                naive = naive or two_proportion_test(s1, i, s2, i).p_value < 0.05
        crossed_sequential += sequential
        crossed_naive += naive
    assert crossed_sequential / experiments <= 0.05
    assert crossed_naive / experiments >= 0.15
    assert crossed_naive >= 5 * max(1, crossed_sequential)
    assert time.perf_counter() - started < 2.0


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
