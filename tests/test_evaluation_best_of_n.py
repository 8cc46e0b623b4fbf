"""Best-of-n: the analytic KL, selection, the rank-weight estimator, and the driver."""

import itertools
import math

import numpy as np
import pytest

from rlhf_jax.evaluation import (
    best_of_n_curve,
    best_of_n_scores,
    bon_kl,
    run_best_of_n,
    select_best_of_n,
)


def test_bon_kl_closed_form():
    assert bon_kl(1) == 0.0
    assert bon_kl(2) == pytest.approx(math.log(2) - 0.5, abs=1e-15)
    ns = np.array([1, 2, 4, 16, 64, 1024])
    ref = np.array([math.log(n) - (n - 1) / n for n in ns])
    np.testing.assert_allclose(bon_kl(ns), ref, rtol=1e-15, atol=1e-16)
    assert np.all(np.diff(bon_kl(ns)) > 0)


@pytest.mark.parametrize("n", [2, 5, 16])
def test_bon_kl_is_the_kl_of_the_max_of_n_draws(n):
    # Independent derivation: for a continuous score, best-of-n has density n·F^{n−1} f, so
    # KL(bon ‖ base) = ∫₀¹ n u^{n−1} log(n u^{n−1}) du. Midpoint rule in float64.
    m = 2_000_000
    u = (np.arange(m) + 0.5) / m
    density = n * u ** (n - 1)
    kl = float(np.sum(density * np.log(density)) / m)
    assert bon_kl(n) == pytest.approx(kl, abs=1e-5)


@pytest.mark.parametrize("bad", [0, -1, 2.5, [1, 0], [], True])
def test_bon_kl_rejects_bad_n(bad):
    with pytest.raises(ValueError, match="n"):
        bon_kl(bad)


def test_selection_is_the_argmax_first_on_ties():
    rng = np.random.default_rng(0)
    proxy = rng.normal(size=(32, 7))
    proxy[3, [1, 4]] = 10.0  # a tie: the earlier sample wins
    gold = rng.normal(size=(32, 7))
    idx = select_best_of_n(proxy)
    ref = [max(range(7), key=lambda j, row=row: (row[j], -j)) for row in proxy]
    assert idx.tolist() == ref
    assert idx[3] == 1
    scores = best_of_n_scores(proxy, gold)
    rows = np.arange(32)
    np.testing.assert_array_equal(scores.index_B, ref)
    np.testing.assert_array_equal(scores.proxy_B, proxy[rows, ref])
    np.testing.assert_array_equal(scores.gold_B, gold[rows, ref])
    # n restricts the choice to each row's first n samples.
    idx3 = select_best_of_n(proxy, n=3)
    assert idx3.tolist() == [int(np.argmax(row[:3])) for row in proxy]
    assert select_best_of_n(proxy, n=1).tolist() == [0] * 32


def brute_force_curve(proxy, gold, n):
    """Average over every n-subset of each row of the gold score of its first-argmax."""
    total_p, total_g = [], []
    for p_row, g_row in zip(proxy, gold, strict=True):
        ps, gs = [], []
        for subset in itertools.combinations(range(len(p_row)), n):
            best = max(subset, key=lambda j, r=p_row: (r[j], -j))
            ps.append(p_row[best])
            gs.append(g_row[best])
        total_p.append(math.fsum(ps) / len(ps))
        total_g.append(math.fsum(gs) / len(gs))
    return math.fsum(total_p) / len(total_p), math.fsum(total_g) / len(total_g)


def test_curve_matches_enumerating_every_subset():
    rng = np.random.default_rng(1)
    proxy = rng.normal(size=(5, 7))
    proxy[0, [2, 5]] = proxy[0, 0]  # ties resolved the same way as select_best_of_n
    proxy[1] = np.round(proxy[1])
    gold = rng.normal(size=(5, 7))
    points = best_of_n_curve(proxy, gold, ns=range(1, 8))
    for point in points:
        ref_p, ref_g = brute_force_curve(proxy, gold, point.n)
        assert point.proxy == pytest.approx(ref_p, abs=1e-14)
        assert point.gold == pytest.approx(ref_g, abs=1e-14)
        assert point.kl == bon_kl(point.n)
    # n = 1 is the plain sample mean, n = N the best of all.
    assert points[0].gold == pytest.approx(gold.mean(), abs=1e-14)
    assert points[-1].gold == pytest.approx(best_of_n_scores(proxy, gold).gold_B.mean(), abs=1e-14)


def test_curve_without_gold_and_frontier_point():
    (point,) = best_of_n_curve(np.eye(3), ns=[2])
    assert math.isnan(point.gold)
    fp = point.frontier_point()
    assert (fp.kind, fp.kl, fp.iteration) == ("best_of_n", bon_kl(2), None)


@pytest.mark.parametrize(
    ("args", "kw", "match"),
    [
        ((np.zeros((2, 3)), np.zeros((2, 4))), {}, "proxy_BxN has shape"),
        ((np.zeros((0, 3)), np.zeros((0, 3))), {}, "proxy_BxN is empty"),
        ((np.zeros(3), np.zeros(3)), {}, "proxy_BxN must be 2-D"),
        ((np.zeros((2, 3)), np.zeros((2, 3))), {"n": 4}, "n=4 exceeds the 3 samples"),
        ((np.zeros((2, 3)), np.zeros((2, 3))), {"n": 0}, "n must be an integer"),
    ],
)
def test_scores_bad_input(args, kw, match):
    with pytest.raises(ValueError, match=match):
        best_of_n_scores(*args, **kw)


def test_curve_bad_ns():
    with pytest.raises(ValueError, match="ns holds n=9"):
        best_of_n_curve(np.zeros((2, 8)), ns=[9])
    with pytest.raises(ValueError, match="ns is empty"):
        best_of_n_curve(np.zeros((2, 8)), ns=[])


def test_driver_with_plain_callables():
    prompts = ["a", "bb", "ccc"]
    calls = {}

    def sample_fn(prompts, n, key):
        calls["sample"] = (n, key)
        return [[p + "x" * k for k in range(n)] for p in prompts]

    # The proxy likes length; the gold reward likes exactly two extra characters.
    proxy_fn = lambda ps, rs: np.array([[len(r) for r in row] for row in rs], dtype=float)
    gold_fn = lambda ps, rs: np.array(
        [[-abs(len(r) - len(p) - 2) for r in row] for p, row in zip(ps, rs, strict=True)],
        dtype=float,
    )
    out = run_best_of_n(
        prompts, n=4, sample_fn=sample_fn, proxy_fn=proxy_fn, gold_fn=gold_fn, key=123
    )
    assert calls["sample"] == (4, 123)
    assert out.index_B.tolist() == [3, 3, 3]
    assert out.chosen == ["axxx", "bbxxx", "cccxxx"]
    assert [p.n for p in out.points] == [1, 2, 4]
    assert out.points[-1].gold == -1.0  # best-of-4 by proxy overshoots the gold optimum
    assert out.points[0].gold == pytest.approx(np.mean([-2, -1, 0, -1]), abs=1e-15)


def test_driver_checks_score_shapes():
    sample_fn = lambda ps, n, key: np.zeros((len(ps), n, 5))
    with pytest.raises(ValueError, match=r"proxy_fn returned shape \(2, 3\); expected"):
        run_best_of_n(["a", "b"], n=4, sample_fn=sample_fn, proxy_fn=lambda p, r: np.zeros((2, 3)))
    with pytest.raises(ValueError, match="prompts is empty"):
        run_best_of_n([], n=4, sample_fn=sample_fn, proxy_fn=lambda p, r: None)
