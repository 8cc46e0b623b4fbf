"""Between rollout and update, on the host: text reward functions, and dynamic sampling.

Text reward functions are Python: each host decodes its own rows of the rollout, scores them,
and the weighted sums are placed back on the mesh as one global array that the score program
adds in. Dynamic sampling (DAPO; Yu et al. 2025) keeps only the groups whose K scores differ
(a group that agrees has zero advantage and only dilutes the batch), rolling out more prompts,
up to ``max_sampling_rounds`` rollouts, until the batch is full; what it drops is counted.

Letters: B episodes (G groups × K samples), N response length.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from rlhf_jax import models, rewards
from rlhf_jax import sharding as sharding_lib
from rlhf_jax.training.ppo.prompts import EncodedPrompts


def to_host(x) -> np.ndarray:
    """A global batch array, whole, on every host."""
    if jax.process_count() == 1:
        return np.asarray(jax.device_get(x))
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def this_hosts_rows(x) -> np.ndarray:
    """This host's rows of a global batch array (the layout `shard_batch` gives it)."""
    full = to_host(x)
    per = full.shape[0] // jax.process_count()
    return full[jax.process_index() * per : (jax.process_index() + 1) * per]


class HostRewards:
    """The text reward functions of one rollout, and the text monitor features:
    ``(host_scores_B or None, metrics, features)`` — ``features`` {name: (B,) on the mesh}, for
    the score program to carry (empty without text features)."""

    def __init__(
        self,
        functions: Sequence[rewards.WeightedFunction],
        tokenizer,
        eos_ids: Sequence[int],
        prompts: EncodedPrompts,
        mesh,
        features: Sequence[rewards.RewardFunction] = (),
    ):
        self.functions = [f for f in functions if f.function.kind == "text"]
        # Weight 0: computed and checked like reward functions, never in the score.
        self.features = [rewards.WeightedFunction(f, 0.0) for f in features if f.kind == "text"]
        self.tokenizer, self.eos_ids, self.prompts, self.mesh = tokenizer, eos_ids, prompts, mesh

    def __call__(self, episodes, indices: np.ndarray):
        """``indices``: this host's rows of the rollout, as indices into the encoded prompts."""
        if not self.functions and not self.features:
            return None, {}, {}
        texts, _ = models.decode_responses(
            self.tokenizer,
            this_hosts_rows(episodes["response_BxN"]),
            this_hosts_rows(episodes["response_mask_BxN"]),
            self.eos_ids,
        )
        rows = self.prompts.kept_N[indices]
        prompts, columns = self.prompts.rows.rows(rows)
        features = {}
        if self.features:
            _, values = rewards.score_texts(self.features, prompts, texts, columns, rows=rows)
            features = sharding_lib.shard_batch(
                {k: v.astype(np.float32) for k, v in values.items()}, self.mesh
            )
        if not self.functions:
            return None, {}, features
        total, parts = rewards.score_texts(self.functions, prompts, texts, columns, rows=rows)
        scores = sharding_lib.shard_batch({"s": total}, self.mesh)["s"]
        means = {}
        for name, values in parts.items():
            every = (
                values if jax.process_count() == 1 else multihost_utils.process_allgather(values)
            )
            means[f"rewards/{name}/mean"] = float(np.mean(every))
        return scores, means, features


def informative_groups(scores_B: np.ndarray, k: int) -> np.ndarray:
    """(G,) bool: the groups whose K scores are not all equal."""
    grouped = np.asarray(scores_B, np.float64).reshape(-1, k)
    return grouped.max(axis=1) > grouped.min(axis=1)


def assemble(rounds: Sequence[tuple[dict, np.ndarray]], groups: int, k: int):
    """One batch of ``groups`` groups from the rounds' ``(episodes, informative)``: the
    informative groups first, in rollout order, then (if too few) uninformative ones to fill.
    Returns ``(episodes, metrics)``."""
    picks: list[list[int]] = [[] for _ in rounds]
    taken = 0
    for wanted in (True, False):
        for r, (_, informative) in enumerate(rounds):
            for g in np.flatnonzero(informative == wanted):
                if taken < groups:
                    picks[r].append(int(g))
                    taken += 1
    parts = []
    for (episodes, _), chosen in zip(rounds, picks, strict=True):
        if chosen:
            rows = jnp.asarray((np.asarray(chosen)[:, None] * k + np.arange(k)).reshape(-1))
            parts.append(jax.tree.map(lambda x, rows=rows: jnp.take(x, rows, axis=0), episodes))
    batch = jax.tree.map(lambda *xs: jnp.concatenate(xs, axis=0), *parts)
    informative = int(sum(inf.sum() for _, inf in rounds))
    uninformative = sum(len(inf) for _, inf in rounds) - informative
    kept_uninformative = max(groups - informative, 0)
    metrics = {
        "dynamic/rounds": float(len(rounds)),
        "dynamic/dropped_groups": float(uninformative - kept_uninformative),
        "dynamic/uninformative_kept": float(kept_uninformative),
        "dynamic/surplus_groups": float(max(informative - groups, 0)),
    }
    return batch, metrics
