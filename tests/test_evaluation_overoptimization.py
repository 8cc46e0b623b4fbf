"""Gao et al.'s over-optimisation forms: known α, β recovered, closed forms, the peaks."""

import math

import numpy as np
import pytest

from rlhf_jax.evaluation.overoptimization import fit_gao, gao_curve

D = np.linspace(0.0, 6.0, 25)


@pytest.mark.parametrize("form", ["bon", "rl"])
@pytest.mark.parametrize(("alpha", "beta"), [(1.3, 0.2), (0.5, 0.05), (2.0, -0.1)])
def test_known_alpha_beta_are_recovered_from_exact_points(form, alpha, beta):
    fit = fit_gao(D, gao_curve(D, alpha=alpha, beta=beta, form=form), form=form)
    assert abs(fit.alpha - alpha) < 1e-6 and abs(fit.beta - beta) < 1e-6
    assert fit.r2 == pytest.approx(1.0, abs=1e-12) and fit.num_points == D.size


def test_the_forms_in_closed_form():
    d = np.array([0.0, 0.5, 1.0, 2.0, math.e])
    np.testing.assert_allclose(gao_curve(d, alpha=1.0, beta=0.25, form="bon"),
                               d * (1.0 - 0.25 * d), rtol=0, atol=1e-15)  # fmt: skip
    rl = gao_curve(d, alpha=1.0, beta=0.5, form="rl")
    assert rl[0] == 0.0  # d log d → 0 at d = 0
    np.testing.assert_allclose(rl[1:], d[1:] * (1.0 - 0.5 * np.log(d[1:])), rtol=1e-15)
    assert rl[4] == pytest.approx(math.e * 0.5, rel=1e-15)  # log e = 1


def test_two_points_give_the_unique_solution_of_the_two_equations():
    # R = α d − β s(d) at two points: solve the 2 × 2 system by Cramer's rule, in float64.
    for form, s in (("bon", lambda d: d * d), ("rl", lambda d: d * math.log(d))):
        (d1, r1), (d2, r2) = (0.7, 0.4), (2.5, 0.9)
        det = d1 * -s(d2) - d2 * -s(d1)
        alpha = (r1 * -s(d2) - r2 * -s(d1)) / det
        beta = (d1 * r2 - d2 * r1) / det
        fit = fit_gao([d1, d2], [r1, r2], form=form)
        assert fit.alpha == pytest.approx(alpha, rel=1e-12)
        assert fit.beta == pytest.approx(beta, rel=1e-12)


def test_noisy_points_match_the_normal_equations_and_r2():
    rng = np.random.default_rng(0)
    r = gao_curve(D, alpha=1.0, beta=0.15, form="bon") + rng.normal(0, 0.05, D.size)
    fit = fit_gao(D, r, form="bon")
    x = np.stack([D, -(D**2)], axis=1)
    expected = np.linalg.solve(x.T @ x, x.T @ r)  # (XᵀX) θ = Xᵀ r
    np.testing.assert_allclose([fit.alpha, fit.beta], expected, rtol=1e-10)
    res = r - x @ expected
    assert fit.r2 == pytest.approx(1 - res @ res / np.sum((r - r.mean()) ** 2), rel=1e-12)
    assert 0.9 < fit.r2 < 1.0


@pytest.mark.parametrize("form", ["bon", "rl"])
def test_the_peak_is_the_curves_maximum(form):
    fit = fit_gao(D, gao_curve(D, alpha=1.2, beta=0.3, form=form), form=form)
    grid = np.linspace(1e-6, 40.0, 800_001)  # the RL peak: e³ ≈ 20.1
    values = fit(grid)
    assert fit.peak_d == pytest.approx(grid[np.argmax(values)], abs=1e-3)
    assert fit.peak_reward == pytest.approx(values.max(), rel=1e-9)
    rising = fit_gao(D, gao_curve(D, alpha=1.0, beta=-0.1, form=form), form=form)
    assert rising.peak_d is None and rising.peak_reward is None


def test_best_of_n_falling_from_the_start_peaks_at_zero():
    # α ≤ 0 < β: the parabola's top is at d ≤ 0, so on d ≥ 0 the best is d = 0, no gain.
    fit = fit_gao(D, gao_curve(D, alpha=-0.2, beta=0.3, form="bon"), form="bon")
    assert fit.alpha == pytest.approx(-0.2, abs=1e-9)
    assert (fit.peak_d, fit.peak_reward) == (0.0, 0.0)
    grid = np.linspace(0.0, 10.0, 1001)
    assert np.argmax(fit(grid)) == 0


def test_bad_points_are_refused_by_name():
    with pytest.raises(ValueError, match="3 points but reward has 2"):
        fit_gao([1, 2, 3], [1, 2], form="bon")
    with pytest.raises(ValueError, match=r"reward\[1\] is not finite"):
        fit_gao([1, 2], [1, float("nan")], form="rl")
    with pytest.raises(ValueError, match=r"d\[0\] < 0"):
        fit_gao([-1, 2], [1, 2], form="rl")
    with pytest.raises(ValueError, match="two or more distinct d > 0"):
        fit_gao([0, 2, 2], [0, 1, 1], form="bon")
    with pytest.raises(ValueError, match="form='ppo'"):
        fit_gao([1, 2], [1, 2], form="ppo")
