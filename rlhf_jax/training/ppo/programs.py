"""A PPO iteration as compiled programs: rollout → score → update, jitted separately (so each
is timed) or as one program (``PPOConfig.fuse_iteration``). Python only loops over iterations.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax

from rlhf_jax import xla_options
from rlhf_jax.training.ppo import experience
from rlhf_jax.training.ppo.config import PPOConfig, Statics
from rlhf_jax.training.ppo.update import update

PER_EPISODE = ("scores_B", "raw_scores_B", "lengths_B", "has_eos_B", "gold_B", "features_B")


def build_iteration(
    statics: Statics,
    config: PPOConfig,
    state_shardings,
    *,
    iterations: int,
    gold_fn: Callable | None = None,
    feature_fns: tuple[tuple[str, Callable], ...] = (),
) -> dict[str, Callable]:
    """The jitted pieces of an iteration: "rollout", "score", "update" and "fused".

    rollout(state, prompt_BxP, prompt_mask_BxP[, round_index]) -> episodes
    score(state, episodes, host_scores_B or None) -> (episodes, episode metrics, per-episode)
    metrics(state, episodes) -> episode metrics                  (of an assembled batch)
    update(state, episodes) -> (state, update metrics)           (the state donated)
    fused(state, prompt_BxP, prompt_mask_BxP) -> (state, metrics, per-episode, responses)
    """
    r = functools.partial(experience.rollout, statics=statics, config=config)
    s = functools.partial(
        experience.score, statics=statics, config=config, gold_fn=gold_fn, feature_fns=feature_fns
    )
    u = functools.partial(update, statics=statics, config=config, iterations=iterations)

    def stats(state, episodes):
        per_episode = {k: episodes[k] for k in PER_EPISODE if k in episodes}
        return experience.episode_metrics(state, episodes, config=config), per_episode

    def score_and_stats(state, episodes, host_scores_B=None):
        episodes = s(state, episodes, host_scores_B)
        return episodes, *stats(state, episodes)

    def fused(state, prompt_BxP, prompt_mask_BxP):
        episodes, ep_metrics, per_episode = score_and_stats(
            state, r(state, prompt_BxP, prompt_mask_BxP)
        )
        new_state, up_metrics = u(state, episodes)
        return new_state, {**ep_metrics, **up_metrics}, per_episode, episodes["response_BxN"]

    options = xla_options.compiler_options()
    return {
        "rollout": jax.jit(r, compiler_options=options),
        "score": jax.jit(score_and_stats, compiler_options=options),
        "metrics": jax.jit(lambda state, episodes: stats(state, episodes)[0]),
        "update": jax.jit(
            u,
            in_shardings=(state_shardings, None),
            out_shardings=(state_shardings, None),
            donate_argnums=0,
            compiler_options=options,
        ),
        # The state comes out in the shardings it goes in with, or the second call would see
        # other input shardings and compile the whole iteration again.
        "fused": jax.jit(
            fused,
            in_shardings=(state_shardings, None, None),
            out_shardings=(state_shardings, None, None, None),
            donate_argnums=0,
            compiler_options=options,
        ),
    }
