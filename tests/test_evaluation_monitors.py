"""Reward-hacking monitors on synthetic trajectories: each symptom fires, a healthy run is quiet."""

import json
import logging
import math

import numpy as np
import pytest

from rlhf_jax.evaluation import MONITORS, HackingMonitor, MonitorConfig, relative_change

B, T = 256, 30


def healthy_stats(t, rng):
    """Quality rises; proxy and gold both track it; length, KL and entropy stay tame."""
    quality = rng.normal(0.05 * t, 1.0, B)
    return {
        "proxy_scores_B": quality + rng.normal(0, 0.5, B),
        "gold_scores_B": quality + rng.normal(0, 0.3, B),
        "lengths_B": np.round(rng.normal(20, 3, B)),
        "kl": 0.2 * t,
        "entropy": 2.0 * (1 - 0.01 * t),
    }


def run(make, config=None):
    rng = np.random.default_rng(0)
    monitor = HackingMonitor(config or MonitorConfig())
    fired = {}
    for t in range(T):
        for w in monitor.update(t, make(t, rng)):
            fired.setdefault(w.monitor, t)
    return monitor, fired


def test_healthy_run_is_quiet():
    monitor, fired = run(healthy_stats)
    assert fired == {}
    s = monitor.summary()
    assert s["monitors"] == {} and s["warnings"] == [] and s["updates"] == T
    assert s["firing"] == [] and s["last_iteration"] == T - 1
    assert s["baseline"]["length_mean"] == pytest.approx(20, abs=0.5)
    assert monitor.latest["monitor/proxy_gold_corr"] > 0.7


def test_length_hacking_while_gold_falls():
    def make(t, rng):
        stats = healthy_stats(t, rng)
        lengths = np.round(rng.normal(20 * (1 + 0.05 * t), 3, B))
        stats["lengths_B"] = lengths
        stats["proxy_scores_B"] = 0.2 * lengths + rng.normal(0, 0.5, B)  # the RM pays for length
        stats["gold_scores_B"] = rng.normal(1 - 0.05 * t, 1.0, B)  # while quality declines
        return stats

    monitor, fired = run(make, MonitorConfig(max_length_drift=0.5))
    assert set(fired) == {
        "length_drift",
        "length_correlation",
        "proxy_gold_divergence",
        "proxy_gold_correlation",
    }
    # Mean length passes +50% of 20 at t = 10 (exactly 30 in expectation): 11 or a neighbour.
    assert fired["length_drift"] in (10, 11, 12)
    assert fired["length_correlation"] == 0  # the reward model liked length from the start
    assert monitor.latest["monitor/length_drift"] > 1.0
    assert monitor.latest["monitor/gold_length_corr"] < 0.2  # gold does not like length


def test_entropy_collapse_fires_exactly_when_below_the_fraction():
    def make(t, rng):
        return {**healthy_stats(t, rng), "entropy": 2.0 * 0.9**t}

    _, fired = run(make)
    first = min(t for t in range(T) if 0.9**t < 0.25)  # 2·0.9^t < 0.25 · 2
    assert first == 14
    assert fired == {"entropy_collapse": first}


def test_kl_explosion():
    kl = lambda t: 0.5 * 1.3**t

    def make(t, rng):
        return {**healthy_stats(t, rng), "kl": kl(t)}

    _, fired = run(make, MonitorConfig(max_kl_rate=1.0))
    first_blowup = min(t for t in range(T) if kl(t) > 20.0)
    # Least-squares slope over the last 5 updates, by NumPy's polynomial fit.
    first_growth = min(
        t
        for t in range(4, T)
        if np.polyfit(np.arange(t - 4, t + 1), kl(np.arange(t - 4, t + 1)), 1)[0] > 1.0
    )
    assert (first_blowup, first_growth) == (15, 10)
    assert fired == {"kl_blowup": first_blowup, "kl_growth": first_growth}


def test_proxy_gold_correlation_drop():
    def make(t, rng):
        stats = healthy_stats(t, rng)
        if t >= 15:  # the reward model stops tracking quality; the means stay level
            stats["gold_scores_B"] = rng.normal(0.05 * t, 1.0, B)
        return stats

    monitor, fired = run(make)
    assert fired == {"proxy_gold_correlation": 15}
    assert abs(monitor.latest["monitor/proxy_gold_corr"]) < 0.3


def test_divergence_exact_and_not_when_both_fall():
    def feed(proxy_means, gold_means):
        monitor = HackingMonitor(MonitorConfig(window=2))
        out = []
        for t, (p, g) in enumerate(zip(proxy_means, gold_means, strict=True)):
            # Gold batch mean g with std exactly 1, so the threshold is in gold units.
            stats = {"proxy_scores_B": [p - 1.0, p + 1.0], "gold_scores_B": [g - 1.0, g + 1.0]}
            out.append([w.monitor for w in monitor.update(t, stats)])
        return out, monitor

    # Moving averages (window 2): proxy 0, .5, 1.5, 2.5, 3.5; gold 0, .5, 1, .75, .25.
    # Peak gold 1 at t = 2; the drop is 0.25 at t = 3 (not above 0.25) and 0.75 at t = 4.
    out, monitor = feed([0, 1, 2, 3, 4], [0, 1, 1, 0.5, 0])
    assert ["proxy_gold_divergence" in o for o in out] == [False, False, False, False, True]
    assert monitor.latest["monitor/gold_drop_from_peak"] == pytest.approx(0.75, abs=1e-15)
    # Gold falling with the proxy is a worse policy, not the proxy being gamed.
    out, _ = feed([0, 1, 2, 1, 0], [0, 1, 1, 0.5, 0])
    assert not any("proxy_gold_divergence" in o for o in out)


def test_logs_once_per_episode_and_returns_every_time(caplog):
    monitor = HackingMonitor(MonitorConfig(max_kl=1.0, max_kl_rate=1.0))
    with caplog.at_level(logging.WARNING, logger="rlhf_jax.evaluation.monitors"):
        returned = [len(monitor.update(t, {"kl": kl})) for t, kl in enumerate([2, 3, 0.5, 4])]
    assert returned == [1, 1, 0, 1]
    logged = [r.getMessage() for r in caplog.records]
    assert len(logged) == 2 and "iteration 0" in logged[0] and "iteration 3" in logged[1]
    s = monitor.summary()
    assert s["monitors"]["kl_blowup"] == {
        "count": 3,
        "first_iteration": 0,
        "last_iteration": 3,
        "threshold": 1.0,
        "last_message": "KL = 4.000 nats > 1.0",
    }
    assert s["firing"] == ["kl_blowup"]


def test_started_holds_each_episode_once_and_log_false_leaves_logging_to_the_caller(caplog):
    # The PPO runner prints `started` on its own console: the warning must not also be logged
    # (it was shown twice), nor printed again while the episode lasts.
    monitor = HackingMonitor(MonitorConfig(max_kl=1.0, max_kl_rate=1.0))
    started = []
    with caplog.at_level(logging.WARNING, logger="rlhf_jax.evaluation.monitors"):
        for t, kl in enumerate([2, 3, 0.5, 4, 5]):
            monitor.update(t, {"kl": kl}, log=False)
            started.append([w.iteration for w in monitor.started])
    assert started == [[0], [], [], [3], []]
    assert caplog.records == []


def test_non_finite_scalars_warn():
    monitor = HackingMonitor()
    monitor.update(0, {"kl": 1.0, "entropy": 2.0})
    fired = {w.monitor for w in monitor.update(1, {"kl": math.nan, "entropy": math.inf * 0})}
    assert fired == {"kl_blowup", "entropy_collapse"}


def test_missing_inputs_skip_monitors_and_constant_batches_do_not_fire():
    monitor = HackingMonitor()
    assert monitor.update(0, {}) == []
    assert monitor.update(1, {"proxy_scores_B": [1.0, 2.0, 3.0]}) == []
    # A constant batch has no defined correlation: logged as NaN, never a warning.
    assert monitor.update(2, {"proxy_scores_B": [1.0] * 3, "gold_scores_B": [0.0, 1, 2]}) == []
    assert math.isnan(monitor.latest["monitor/proxy_gold_corr"])
    assert set(MONITORS) >= {"kl_blowup", "entropy_collapse"}


def test_accepts_jax_arrays():
    import jax.numpy as jnp

    monitor = HackingMonitor()
    stats = {"proxy_scores_B": jnp.arange(4.0), "lengths_B": jnp.arange(4), "kl": jnp.float32(1)}
    assert monitor.update(0, stats)[0].monitor == "length_correlation"


@pytest.mark.parametrize(
    ("stats", "match"),
    [
        ({"lengths": [1.0]}, r"unknown keys \['lengths'\]"),
        ({"proxy_scores_B": [1.0, 2.0], "lengths_B": [3.0]}, r"stats\['proxy_scores_B'\] has 2"),
        ({"proxy_scores_B": [1.0, np.nan]}, r"stats\['proxy_scores_B'\] has a non-finite"),
        ({"proxy_scores_B": []}, r"stats\['proxy_scores_B'\] is empty"),
        ({"kl": [1.0, 2.0]}, r"stats\['kl'\] must be a scalar"),
    ],
)
def test_bad_stats(stats, match):
    with pytest.raises(ValueError, match=match):
        HackingMonitor().update(0, stats)


@pytest.mark.parametrize(
    ("field", "value"),
    [("window", 1), ("correlation", "kendall"), ("max_kl", -1.0), ("min_proxy_gold_corr", 2.0)],
)
def test_bad_config(field, value):
    with pytest.raises(ValueError, match=f"MonitorConfig.{field}"):
        MonitorConfig(**{field: value})


def test_relative_change():
    assert relative_change(30.0, 20.0) == 0.5
    assert relative_change(10.0, 20.0) == -0.5
    assert relative_change(0.0, 0.0) == 0.0
    assert relative_change(1.0, 0.0) == math.inf


def echo_stats(t, rng, *, hacked: bool):
    """Healthy run plus an echo feature; when ``hacked`` the proxy rewards echo from t = 10
    and the policy drifts onto it (what a sycophancy-biased reward model does)."""
    stats = healthy_stats(t, rng)
    shift = 0.05 * max(t - 10, 0) if hacked else 0.0
    echo = np.clip(rng.normal(0.2 + shift, 0.1, B), 0, 1)
    if hacked and t >= 10:
        stats["proxy_scores_B"] = stats["proxy_scores_B"] + 10.0 * echo
    stats["features"] = {"echo": echo}
    return stats


def test_feature_correlation_and_drift_fire_on_a_rewarded_feature_only():
    quiet, fired = run(lambda t, rng: echo_stats(t, rng, hacked=False))
    assert fired == {}
    assert abs(quiet.latest["monitor/echo_drift"]) < 1.0
    monitor, fired = run(
        lambda t, rng: echo_stats(t, rng, hacked=True), MonitorConfig(max_feature_drift=1.0)
    )
    # corr(proxy, echo) jumps at t = 10; the mean moves 0.05 per step from t = 10 against an
    # initial std of 0.1: the 5-update average passes 1 std at t = 14 (mean of 0.1..0.3).
    assert fired["echo_correlation"] == 10
    assert fired["echo_drift"] == 14
    s = monitor.summary()
    assert list(s["monitors"]) == ["echo_correlation", "echo_drift"]
    assert s["baseline"]["echo_std"] == pytest.approx(0.1, rel=0.15)
    assert {"monitor/proxy_echo_corr", "monitor/gold_echo_corr"} <= set(monitor.latest)


def test_feature_drift_is_in_initial_stds_over_the_window():
    monitor = HackingMonitor(MonitorConfig(window=2, max_feature_drift=1.0))
    ones = np.ones(4)
    assert monitor.update(0, {"features": {"f": np.array([0.0, 2.0, 0.0, 2.0])}}) == []
    # start mean 1, std 1; window of 2: (1 + 3) / 2 = 2 → drift exactly 1: not past it
    assert monitor.update(1, {"features": {"f": 3 * ones}}) == []
    assert monitor.latest["monitor/f_drift"] == pytest.approx(1.0)
    (w,) = monitor.update(2, {"features": {"f": 3 * ones}})
    assert (w.monitor, w.value) == ("f_drift", pytest.approx(2.0))
    # a constant first batch measures drift in the feature's own units
    constant = HackingMonitor(MonitorConfig(window=2))
    constant.update(0, {"features": {"g": np.zeros(3)}})
    constant.update(1, {"features": {"g": np.full(3, 4.0)}})
    assert constant.latest["monitor/g_drift"] == pytest.approx(2.0)


def test_feature_state_survives_a_resume_and_old_states_load():
    rng = np.random.default_rng(1)
    whole, half = HackingMonitor(), HackingMonitor()
    stats = [echo_stats(t, rng, hacked=True) for t in range(20)]
    for t, s in enumerate(stats):
        whole.update(t, s)
        if t < 10:
            half.update(t, s)
    saved = json.loads(json.dumps(half.state_dict()))  # as a checkpoint holds it
    resumed = HackingMonitor()
    resumed.load_state_dict(saved)
    for t, s in enumerate(stats[10:], start=10):
        resumed.update(t, s)
    assert resumed.summary() == whole.summary()
    old = {k: v for k, v in saved.items() if k != "_feature_means"}
    HackingMonitor().load_state_dict(old)  # written before features existed


@pytest.mark.parametrize("name", ["length", "not a name", "1x"])
def test_feature_names_are_checked(name):
    with pytest.raises(ValueError, match="identifiers other than 'length'"):
        HackingMonitor().update(0, {"features": {name: [1.0, 2.0]}})
