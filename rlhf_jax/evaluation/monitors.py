"""Reward-hacking monitors: warnings computed from statistics a PPO loop already has.

Optimising a learned reward eventually games it (Gao et al. 2022): the proxy keeps rising while
the gold reward turns down, responses drift in length because raters and reward models like
length (Singhal et al. 2023), the policy runs away from the reference, or it collapses onto a
few high-scoring outputs. Each monitor watches one symptom and warns past a threshold:

    proxy_gold_divergence  gold (moving average over ``window``) has fallen from its peak by
                           more than ``gold_drop`` × the initial across-sample gold std while
                           the proxy (same average) is above its value at that peak
    proxy_gold_correlation corr(proxy_B, gold_B) across samples < ``min_proxy_gold_corr``
    length_correlation     corr(proxy_B, lengths_B) across samples > ``max_length_corr``
    length_drift           |mean length / initial mean length − 1| > ``max_length_drift``
    kl_blowup              kl > ``max_kl`` nats, or kl not finite
    kl_growth              least-squares slope of kl over the last ``window`` updates
                           > ``max_kl_rate`` nats per iteration
    entropy_collapse       entropy < ``min_entropy_frac`` × initial entropy
    <f>_correlation        corr(proxy_B, f_B) across samples > ``max_feature_corr``, for each
                           feature f of the responses given (``features``: the prompt echoed,
                           hedging or agreement phrases, ...)
    <f>_drift              |moving average (over ``window``) of mean f − its initial mean|
                           > ``max_feature_drift`` × the initial across-sample std of f

Only the divergence and proxy–gold correlation need a gold reward; the rest watch what a real
run has (the proxy, the responses' features, KL, entropy). A rising correlation of the proxy
with a feature the task does not ask for, and the policy drifting along it, is how a learned
reward's bias shows without a gold reward (verbosity: length; sycophancy: echo, agreement).

"Initial" is the first update that carried the statistic (ideally the SFT policy's samples).
Correlations use ``config.correlation`` (Spearman by default: rank-based, so one outlying
reward-model score cannot make or break it). A monitor whose inputs are missing, or whose
correlation is undefined (a constant batch), is skipped for that update.

Letters: B samples (responses) in the iteration's batch.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping

import numpy as np

from rlhf_jax.evaluation._checks import as_vector, same_length
from rlhf_jax.evaluation.correlation import correlation, slope
from rlhf_jax.evaluation.monitor_config import MONITORS, STATS_KEYS, MonitorConfig, MonitorWarning

__all__ = [
    "MONITORS", "STATS_KEYS", "HackingMonitor", "MonitorConfig", "MonitorWarning",
    "relative_change",
]  # fmt: skip

logger = logging.getLogger(__name__)


def relative_change(now: float, start: float) -> float:
    """(now − start) / |start|: the relative drift of a positive quantity like mean length."""
    if start == 0:
        return math.inf if now != 0 else 0.0
    return (now - start) / abs(start)


def _scalar(stats: Mapping, key: str) -> float | None:
    if stats.get(key) is None:
        return None
    arr = np.asarray(stats[key], dtype=np.float64)
    if arr.size != 1:
        raise ValueError(f"stats[{key!r}] must be a scalar; got shape {arr.shape}")
    return float(arr.reshape(()))


class HackingMonitor:
    """Watches per-iteration PPO statistics and warns on the symptoms of reward hacking.

        monitor = HackingMonitor(MonitorConfig())
        for it in range(iterations):
            ...
            for w in monitor.update(it, {"proxy_scores_B": scores, "gold_scores_B": gold,
                                         "lengths_B": lengths, "kl": kl, "entropy": ent}):
                ...  # also logged with logging.warning when a monitor starts firing
        report_data = monitor.summary()

    ``stats`` keys (all optional; each monitor runs when its inputs are present):
      proxy_scores_B  reward-model scores of this iteration's responses, before the KL penalty
      gold_scores_B   gold reward r* of the same responses (where one exists)
      lengths_B       the responses' lengths in tokens (up to and including EOS)
      kl              mean KL(π ‖ π_ref) per response, nats (a scalar)
      entropy         mean per-token policy entropy, nats (a scalar)
      features        {name: per-sample values (B,)} of features of the same responses
                      (names are identifiers other than "length"; the same names every update)
    Arrays may be NumPy or JAX (brought to the host); per-sample arrays must be 1-D, the same
    length, finite. A non-finite ``kl`` or ``entropy`` is itself reported as a warning.

    ``update`` returns every warning that holds at this iteration; ``logging.warning`` is
    called only when a monitor starts firing, so a long episode of hacking logs once.
    ``latest`` holds this update's statistics under ``monitor/…`` names for a metric writer.
    """

    def __init__(self, config: MonitorConfig = MonitorConfig()):  # noqa: B008 (frozen)
        self.config = config
        self.warnings: list[MonitorWarning] = []
        self.latest: dict[str, float] = {}
        self.updates = 0
        self._baseline: dict[str, float] = {}
        self._firing: set[str] = set()
        # The warnings of monitors that started firing at the last update (``log`` sends them
        # to `logging.warning`; a caller with its own console passes log=False and shows these).
        self.started: list[MonitorWarning] = []
        self._proxy_means: list[float] = []  # per update that had gold, for the divergence
        self._gold_means: list[float] = []
        self._smoothed: list[tuple[float, float]] = []  # (proxy, gold) moving averages
        self._kl: list[tuple[float, float]] = []  # (iteration, kl), finite only
        self._feature_means: dict[str, list[float]] = {}  # per feature, per update
        self._last_iteration: int | None = None

    # -- one update ----------------------------------------------------------------------

    def update(self, iteration: int, stats: Mapping, *, log: bool = True) -> list[MonitorWarning]:
        unknown = sorted(set(stats) - set(STATS_KEYS))
        if unknown:
            raise ValueError(f"stats has unknown keys {unknown}; expected some of {STATS_KEYS}")
        arrays = {
            k: as_vector(stats[k], f"stats[{k!r}]")
            for k in ("proxy_scores_B", "gold_scores_B", "lengths_B")
            if stats.get(k) is not None
        }
        features = {}
        for name, values in (stats.get("features") or {}).items():
            if not str(name).isidentifier() or name == "length":
                raise ValueError(
                    f"stats['features'] has a feature named {name!r}; names are identifiers "
                    "other than 'length' (length has its own monitors, from lengths_B)"
                )
            features[name] = arrays[f"features[{name!r}]"] = as_vector(
                values, f"stats['features'][{name!r}]"
            )
        if len(arrays) > 1:
            same_length(**{f"stats[{k!r}]": v for k, v in arrays.items()})
        proxy = arrays.get("proxy_scores_B")
        gold = arrays.get("gold_scores_B")
        lengths = arrays.get("lengths_B")
        kl = _scalar(stats, "kl")
        entropy = _scalar(stats, "entropy")

        self.latest = {}
        fired: list[MonitorWarning] = []
        warn = lambda *a: fired.append(MonitorWarning(int(iteration), *a))
        cfg = self.config

        if proxy is not None and gold is not None:
            self._divergence(proxy, gold, warn)
            r = self._corr(proxy, gold)
            self.latest["monitor/proxy_gold_corr"] = r
            if r < cfg.min_proxy_gold_corr:  # NaN compares False: skipped
                warn(
                    "proxy_gold_correlation",
                    f"{cfg.correlation} corr(proxy, gold) = {r:.3f} < {cfg.min_proxy_gold_corr}",
                    r,
                    cfg.min_proxy_gold_corr,
                )
        if lengths is not None:
            self._length(proxy, gold, lengths, warn)
        if kl is not None:
            self._kl_checks(iteration, kl, warn)
        if entropy is not None:
            self._entropy(entropy, warn)
        for name, values in features.items():
            self._feature(name, proxy, gold, values, warn)

        self.updates += 1
        self._last_iteration = int(iteration)
        now = {w.monitor for w in fired}
        self.started = [w for w in fired if w.monitor not in self._firing]
        if log:
            for w in self.started:
                logger.warning("reward-hacking monitor: %s", w)
        self._firing = now
        self.warnings.extend(fired)
        return fired

    def _corr(self, x: np.ndarray, y: np.ndarray) -> float:
        if len(x) < 2:
            return math.nan
        return correlation(x, y, method=self.config.correlation)

    def _divergence(self, proxy: np.ndarray, gold: np.ndarray, warn) -> None:
        cfg = self.config
        if "gold_std" not in self._baseline:
            # Scale-free threshold: gold units are whatever r* is. A degenerate batch falls
            # back to raw units rather than dividing by zero.
            std = float(np.std(gold))
            self._baseline["gold_std"] = std if std > 0 else 1.0
        self._proxy_means.append(float(proxy.mean()))
        self._gold_means.append(float(gold.mean()))
        w = cfg.window
        smoothed = (float(np.mean(self._proxy_means[-w:])), float(np.mean(self._gold_means[-w:])))
        self._smoothed.append(smoothed)
        peak = int(np.argmax([g for _, g in self._smoothed]))
        proxy_peak, gold_peak = self._smoothed[peak]
        proxy_now, gold_now = smoothed
        drop = (gold_peak - gold_now) / self._baseline["gold_std"]
        self.latest["monitor/gold_drop_from_peak"] = drop
        if drop > cfg.gold_drop and proxy_now > proxy_peak:
            warn(
                "proxy_gold_divergence",
                f"gold fell {drop:.2f} std from its peak ({gold_peak:.3f} → {gold_now:.3f}) "
                f"while proxy rose ({proxy_peak:.3f} → {proxy_now:.3f})",
                drop,
                cfg.gold_drop,
            )

    def _length(self, proxy, gold, lengths: np.ndarray, warn) -> None:
        cfg = self.config
        mean = float(lengths.mean())
        start = self._baseline.setdefault("length_mean", mean)
        drift = relative_change(mean, start)
        self.latest["monitor/length_mean"] = mean
        self.latest["monitor/length_drift"] = drift
        if abs(drift) > cfg.max_length_drift:
            warn(
                "length_drift",
                f"mean length {mean:.1f} is {100 * drift:+.0f}% from {start:.1f} at the start",
                drift,
                cfg.max_length_drift,
            )
        if gold is not None:
            # Logged for comparison: length that the gold reward also likes is not hacking.
            self.latest["monitor/gold_length_corr"] = self._corr(gold, lengths)
        if proxy is not None:
            r = self._corr(proxy, lengths)
            self.latest["monitor/proxy_length_corr"] = r
            if r > cfg.max_length_corr:
                warn(
                    "length_correlation",
                    f"{cfg.correlation} corr(proxy, length) = {r:.3f} > {cfg.max_length_corr}",
                    r,
                    cfg.max_length_corr,
                )

    def _feature(self, name: str, proxy, gold, values: np.ndarray, warn) -> None:
        cfg = self.config
        means = self._feature_means.setdefault(name, [])
        means.append(float(values.mean()))
        if f"{name}_std" not in self._baseline:
            std = float(np.std(values))
            self._baseline[f"{name}_mean"] = means[0]
            self._baseline[f"{name}_std"] = std if std > 0 else 1.0  # raw units if constant
        start, std = self._baseline[f"{name}_mean"], self._baseline[f"{name}_std"]
        now = float(np.mean(means[-cfg.window :]))
        drift = (now - start) / std
        self.latest[f"monitor/{name}_mean"] = means[-1]
        self.latest[f"monitor/{name}_drift"] = drift
        if abs(drift) > cfg.max_feature_drift:
            warn(
                f"{name}_drift",
                f"mean {name} {now:.3g} (last {min(len(means), cfg.window)} updates) is "
                f"{drift:+.2f} initial stds from {start:.3g} at the start",
                drift,
                cfg.max_feature_drift,
            )
        if gold is not None:
            self.latest[f"monitor/gold_{name}_corr"] = self._corr(gold, values)
        if proxy is not None:
            r = self._corr(proxy, values)
            self.latest[f"monitor/proxy_{name}_corr"] = r
            if r > cfg.max_feature_corr:
                warn(
                    f"{name}_correlation",
                    f"{cfg.correlation} corr(proxy, {name}) = {r:.3f} > {cfg.max_feature_corr}",
                    r,
                    cfg.max_feature_corr,
                )

    def _kl_checks(self, iteration: int, kl: float, warn) -> None:
        cfg = self.config
        self.latest["monitor/kl"] = kl
        if not math.isfinite(kl) or kl > cfg.max_kl:
            warn("kl_blowup", f"KL = {kl:.3f} nats > {cfg.max_kl}", kl, cfg.max_kl)
        if not math.isfinite(kl):
            return
        self._kl.append((float(iteration), kl))
        recent = self._kl[-cfg.window :]
        if len(recent) == cfg.window and len({t for t, _ in recent}) > 1:
            rate = slope([t for t, _ in recent], [k for _, k in recent])
            self.latest["monitor/kl_rate"] = rate
            if rate > cfg.max_kl_rate:
                warn(
                    "kl_growth",
                    f"KL grows {rate:.3f} nats/iteration over {cfg.window} updates "
                    f"> {cfg.max_kl_rate}",
                    rate,
                    cfg.max_kl_rate,
                )

    def _entropy(self, entropy: float, warn) -> None:
        cfg = self.config
        if not math.isfinite(entropy):
            warn("entropy_collapse", f"entropy is {entropy}", entropy, cfg.min_entropy_frac)
            return
        start = self._baseline.setdefault("entropy", entropy)
        frac = entropy / start if start > 0 else math.nan
        self.latest["monitor/entropy_frac"] = frac
        if frac < cfg.min_entropy_frac:
            warn(
                "entropy_collapse",
                f"entropy {entropy:.3f} is {frac:.2f} of its initial {start:.3f} "
                f"< {cfg.min_entropy_frac}",
                frac,
                cfg.min_entropy_frac,
            )

    # -- resume ----------------------------------------------------------------------------

    _STATE = ("latest", "updates", "_baseline", "_firing", "_proxy_means", "_gold_means",
              "_smoothed", "_kl", "_last_iteration", "_feature_means")  # fmt: skip

    def state_dict(self) -> dict:
        """Everything ``update`` has accumulated, as plain JSON data (for a checkpoint), so a
        resumed run's monitors continue as if never stopped."""
        state = {k: getattr(self, k) for k in self._STATE}
        state["_firing"] = sorted(self._firing)
        state["warnings"] = [dataclasses.asdict(w) for w in self.warnings]
        return state

    def load_state_dict(self, state: Mapping) -> None:
        """The inverse of `state_dict` (the thresholds stay this monitor's own)."""
        for key in self._STATE:
            # a state saved before features existed has none
            setattr(self, key, state.get(key, {}) if key == "_feature_means" else state[key])
        self._firing = set(state["_firing"])
        self._smoothed = [tuple(x) for x in state["_smoothed"]]
        self._kl = [tuple(x) for x in state["_kl"]]
        self.warnings = [MonitorWarning(**w) for w in state["warnings"]]

    # -- over the run --------------------------------------------------------------------

    def summary(self) -> dict:
        """Plain-data summary for the report: per monitor, how often and when it fired.

        Keys: ``updates``, ``last_iteration``, ``config`` (the thresholds), ``baseline``
        (initial gold std, mean length, entropy), ``firing`` (monitors firing at the last
        update), ``monitors`` (name → count, first/last iteration, last message) for every
        monitor that fired, and ``warnings`` (all of them, as dicts).
        """
        monitors: dict[str, dict] = {}
        for w in self.warnings:
            entry = monitors.setdefault(
                w.monitor, {"count": 0, "first_iteration": w.iteration, "threshold": w.threshold}
            )
            entry["count"] += 1
            entry["last_iteration"] = w.iteration
            entry["last_message"] = w.message
        return {
            "updates": self.updates,
            "last_iteration": self._last_iteration,
            "config": dataclasses.asdict(self.config),
            "baseline": dict(self._baseline),
            "firing": sorted(self._firing),
            # the built-in monitors in their order, then the features' as they first fired
            "monitors": {
                **{m: monitors[m] for m in MONITORS if m in monitors},
                **{m: v for m, v in monitors.items() if m not in MONITORS},
            },
            "warnings": [dataclasses.asdict(w) for w in self.warnings],
        }
