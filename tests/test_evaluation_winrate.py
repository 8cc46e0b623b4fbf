"""Win rate and its Wilson interval against closed forms and a float64 reference."""

import itertools
import math

import numpy as np
import pytest

from rlhf_jax.evaluation import WinRate, wilson_interval, win_rate

Z95 = 1.959963984540054  # Φ⁻¹(0.975)


def wilson_reference(p, n, z=Z95):
    """Wilson (1927) in the textbook form (p + z²/2n ± z√(p(1−p)/n + z²/4n²)) / (1 + z²/n)."""
    a = p + z * z / (2 * n)
    b = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    c = 1 + z * z / n
    return (a - b) / c, (a + b) / c


def test_all_wins_all_losses_all_ties():
    wr = win_rate([2.0, 3.0, 4.0], [1.0, 1.0, 1.0])
    assert (wr.rate, wr.wins, wr.losses, wr.ties, wr.n) == (1.0, 3, 0, 0, 3)
    assert wr.ci_high == 1.0 and 0 < wr.ci_low < 1  # Wilson does not collapse at p̂ = 1
    assert win_rate([0.0] * 4, [1.0] * 4).rate == 0.0
    ties = win_rate([1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 4.0])
    assert (ties.rate, ties.ties, ties.wins, ties.losses) == (0.5, 4, 0, 0)


def test_ties_count_half_and_tie_margin():
    a = np.array([1.0, 1.05, 2.0, 0.0, 3.0])
    b = np.array([1.0, 1.00, 1.0, 1.0, 3.2])
    exact = win_rate(a, b)
    assert (exact.wins, exact.ties, exact.losses) == (2, 1, 2)
    assert exact.rate == pytest.approx((2 + 0.5) / 5, abs=0)
    loose = win_rate(a, b, tie_margin=0.25)
    assert (loose.wins, loose.ties, loose.losses) == (1, 3, 1)
    assert loose.rate == 0.5


@pytest.mark.parametrize("n", [1, 2, 7, 50, 1000])
@pytest.mark.parametrize("p", [0.0, 0.1, 0.5, 0.73, 1.0])
def test_wilson_matches_reference_and_solves_the_score_equation(p, n):
    low, high = wilson_interval(p, n)
    ref_low, ref_high = wilson_reference(p, n)
    np.testing.assert_allclose([low, high], [ref_low, ref_high], rtol=1e-13, atol=1e-15)
    assert low <= p <= high
    # The endpoints are the roots of (p̂ − π)² = z² π(1 − π)/n, Wilson's defining equation.
    for pi in (low, high):
        assert (p - pi) ** 2 == pytest.approx(Z95**2 * pi * (1 - pi) / n, abs=1e-12)


def test_ci_contains_rate_and_narrows_with_n():
    rng = np.random.default_rng(0)
    widths = []
    for n in (10, 100, 1000, 10000):
        a = rng.normal(0.3, 1.0, n)
        b = rng.normal(0.0, 1.0, n)
        wr = win_rate(a, b)
        assert wr.ci_low <= wr.rate <= wr.ci_high
        ref = wilson_reference(wr.rate, n)
        np.testing.assert_allclose([wr.ci_low, wr.ci_high], ref, rtol=1e-13)
        widths.append(wr.ci_high - wr.ci_low)
    assert all(w1 > w2 for w1, w2 in itertools.pairwise(widths))
    # Width shrinks like 1/√n: 100× the prompts, a tenth of the width (to leading order).
    assert widths[1] / widths[3] == pytest.approx(10, rel=0.1)


def test_confidence_level():
    wr90 = win_rate([1.0, 0.0, 1.0, 1.0], [0.0, 1.0, 0.0, 0.0], confidence=0.9)
    ref = wilson_reference(0.75, 4, z=1.6448536269514722)
    np.testing.assert_allclose([wr90.ci_low, wr90.ci_high], ref, rtol=1e-13)
    wr95 = win_rate([1.0, 0.0, 1.0, 1.0], [0.0, 1.0, 0.0, 0.0])
    assert wr95.ci_low < wr90.ci_low and wr90.ci_high < wr95.ci_high


def test_coverage_is_near_nominal():
    # Seeded simulation: with n = 80 and p = 0.8 Wilson's coverage sits near 95%.
    rng = np.random.default_rng(1)
    n, p, hits, reps = 80, 0.8, 0, 4000
    for k in rng.binomial(n, p, size=reps):
        low, high = wilson_interval(k / n, n)
        hits += low <= p <= high
    assert 0.93 <= hits / reps <= 0.97


def test_fields_and_str():
    wr = win_rate([1.0, 0.0], [0.0, 0.0])
    assert isinstance(wr, WinRate)
    assert set(wr.as_dict()) >= {"rate", "ci_low", "ci_high", "wins", "losses", "ties", "n"}
    assert "1W/1T/0L of 2" in str(wr)


@pytest.mark.parametrize(
    ("a", "b", "kw", "match"),
    [
        ([1.0, 2.0], [1.0], {}, "scores_a has 2, scores_b has 1"),
        ([], [], {}, "scores_a is empty"),
        ([1.0, np.nan], [1.0, 2.0], {}, "scores_a has a non-finite value at index 1"),
        ([[1.0]], [[1.0]], {}, "scores_a must be 1-D"),
        ([1.0], [1.0], {"tie_margin": -0.1}, "tie_margin"),
        ([1.0], [1.0], {"confidence": 1.0}, "confidence"),
    ],
)
def test_bad_input(a, b, kw, match):
    with pytest.raises(ValueError, match=match):
        win_rate(a, b, **kw)
