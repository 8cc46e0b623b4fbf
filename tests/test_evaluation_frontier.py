"""KL–reward points from histories and their Pareto frontier."""

import math

import numpy as np
import pytest

from rlhf_jax.evaluation import (
    FrontierPoint,
    HistoryKeys,
    collect_points,
    frontier,
    pareto_frontier,
    points_from_history,
    reward_at_kl,
    window_means,
)


def dominated_reference(kl, reward):
    """O(P²) definition: i is dominated if some j is no worse in both and better in one."""
    out = []
    for i in range(len(kl)):
        dom = any(
            kl[j] <= kl[i] and reward[j] >= reward[i] and (kl[j] < kl[i] or reward[j] > reward[i])
            for j in range(len(kl))
        )
        out.append(dom)
    return np.array(out)


def test_hand_made_set():
    kl = [0.0, 1.0, 2.0, 1.5, 3.0, 4.0, 2.0]
    reward = [0.1, 0.5, 0.6, 0.4, 0.9, 0.8, 0.7]
    # (1.5, 0.4) is beaten by (1.0, 0.5); (2.0, 0.6) by (2.0, 0.7); (4.0, 0.8) by (3.0, 0.9).
    assert pareto_frontier(kl, reward).tolist() == [0, 1, 6, 4]


def test_duplicates_keep_the_first_and_equal_reward_keeps_lower_kl():
    assert pareto_frontier([1.0, 1.0, 2.0], [0.5, 0.5, 0.5]).tolist() == [0]
    assert pareto_frontier([3.0, 1.0], [0.2, 0.2]).tolist() == [1]
    assert pareto_frontier([5.0], [-1.0]).tolist() == [0]


def test_random_sets_match_the_definition():
    rng = np.random.default_rng(0)
    for _ in range(20):
        kl = rng.integers(0, 6, size=15).astype(float)  # repeats on purpose
        reward = rng.integers(0, 6, size=15).astype(float)
        idx = pareto_frontier(kl, reward)
        dom = dominated_reference(kl, reward)
        # Every kept point is undominated; every undominated point is kept up to duplicates.
        assert not dom[idx].any()
        kept = {(kl[i], reward[i]) for i in idx}
        assert kept == {(kl[i], reward[i]) for i in np.flatnonzero(~dom)}
        assert len(kept) == len(idx)
        assert np.all(np.diff(kl[idx]) > 0) and np.all(np.diff(reward[idx]) > 0)


@pytest.mark.parametrize(
    ("kl", "reward", "match"),
    [
        ([1.0, 2.0], [1.0], "kl_P has 2, reward_P has 1"),
        ([], [], "kl_P is empty"),
        ([np.nan], [1.0], "kl_P has a non-finite value"),
    ],
)
def test_bad_input(kl, reward, match):
    with pytest.raises(ValueError, match=match):
        pareto_frontier(kl, reward)


def test_points_from_histories_and_frontier_of_points():
    keys = HistoryKeys()
    history = [
        {"iteration": 0, keys.kl: 0.0, keys.proxy: 0.0, keys.gold: 0.0},
        {"iteration": 10, keys.kl: 2.0, keys.proxy: 1.0, keys.gold: 0.8},
        {"iteration": 20, keys.kl: None, keys.proxy: 1.5},  # no KL: not placeable
        {"iteration": 30, keys.kl: 6.0, keys.proxy: 2.5, keys.gold: 0.6},
    ]
    points = points_from_history(history, run="ppo")
    assert [(p.iteration, p.kl, p.gold) for p in points] == [
        (0, 0.0, 0.0),
        (10, 2.0, 0.8),
        (30, 6.0, 0.6),
    ]
    assert all(p.run == "ppo" and p.kind == "policy" for p in points)
    dpo = FrontierPoint(kl=1.0, gold=0.9, proxy=math.nan, run="dpo")
    no_gold = FrontierPoint(kl=0.5, gold=math.nan, proxy=3.0, run="x")
    pts = [*collect_points({"ppo": history}), dpo, no_gold]
    assert [(p.run, p.kl) for p in frontier(pts)] == [("ppo", 0.0), ("dpo", 1.0)]
    # By proxy the DPO point (no proxy) drops out and the proxy-rich point leads.
    assert [(p.run, p.kl) for p in frontier(pts, reward="proxy")] == [("ppo", 0.0), ("x", 0.5)]
    assert frontier([no_gold]) == []
    with pytest.raises(ValueError, match="reward="):
        frontier(pts, reward="kl")


def reward_at_kl_reference(kl, reward, target):
    """A loop in plain Python floats: the best reward among points within the budget."""
    best = math.nan
    for k, r in zip(kl, reward, strict=True):
        if k <= target and not r <= best:
            best = r
    return best


def window_means_reference(x, window):
    w = min(window, len(x))
    return [sum(x[i : i + w]) / w for i in range(len(x) - w + 1)]


def test_reward_at_kl_closed_forms():
    # reward = 2 KL − KL², KL rising by 0.5: the best within each budget, on the points only.
    kl = [0.0, 0.5, 1.0, 1.5, 2.0]
    reward = [2 * k - k * k for k in kl]
    assert reward_at_kl(kl, reward, 1.0) == 1.0  # the peak
    assert reward_at_kl(kl, reward, 0.75) == 0.75  # the last point within 0.75
    assert reward_at_kl(kl, reward, 5.0) == 1.0  # past the peak, the peak still counts
    assert reward_at_kl(kl, reward, 0.0) == 0.0
    assert math.isnan(reward_at_kl([1.0, 2.0], [0.0, 1.0], 0.5))  # nothing within the budget
    # A plateau in KL while the reward rises: the latest, best point counts.
    assert reward_at_kl([0.0, 2.0, 2.1, 2.0], [0.0, 0.5, 0.6, 0.9], 2.0) == 0.9


def test_window_means_closed_forms():
    # Means of 2: KL (0, 1, 3, 5) → (0.5, 2, 4); reward (4, 2, 0, 6) → (3, 1, 3).
    assert window_means([0.0, 1.0, 3.0, 5.0], 2).tolist() == [0.5, 2.0, 4.0]
    assert window_means([4.0, 2.0, 0.0, 6.0], 2).tolist() == [3.0, 1.0, 3.0]
    assert reward_at_kl(window_means([0, 1, 3, 5], 2), window_means([4, 2, 0, 6], 2), 3.0) == 3.0
    assert window_means([1.0, 2.0, 3.0], 1).tolist() == [1.0, 2.0, 3.0]
    assert window_means([1.0, 2.0, 6.0], 10).tolist() == [3.0]  # shorter: one mean of all


def test_reward_at_kl_and_window_means_match_the_references():
    rng = np.random.default_rng(1)
    for _ in range(50):
        n = int(rng.integers(1, 30))
        kl = np.cumsum(rng.normal(0.1, 0.2, size=n))  # noisy, not monotone
        reward = rng.normal(size=n)
        target = float(rng.uniform(-0.5, 2.0))
        window = int(rng.integers(1, 6))
        got = window_means(kl, window)
        want = window_means_reference(kl.tolist(), window)
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
        got = reward_at_kl(kl, reward, target)
        want = reward_at_kl_reference(kl.tolist(), reward.tolist(), target)
        if math.isnan(want):
            assert math.isnan(got)
        else:
            assert got == want


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"kl_P": [0.0, 1.0], "reward_P": [0.0], "kl": 0.5}, "reward_P"),
        ({"kl_P": [0.0, np.nan], "reward_P": [0.0, 1.0], "kl": 0.5}, "kl_P"),
        ({"kl_P": [0.0, 1.0], "reward_P": [0.0, 1.0], "kl": np.inf}, "kl="),
    ],
)
def test_reward_at_kl_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        reward_at_kl(**kwargs)


def test_window_means_bad_input():
    with pytest.raises(ValueError, match="window=0"):
        window_means([1.0, 2.0], 0)
    with pytest.raises(ValueError, match="non-empty 1-D"):
        window_means([], 3)
