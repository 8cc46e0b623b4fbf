"""PPO's options, its state, and the static half of its four models.

Every implementation detail of the PPO reproductions (lm-human-preferences; Huang et al. 2024,
"The N+ Implementation Details of RLHF with PPO") is a `PPOConfig` field with the literature
default. RLOO and GRPO reuse the same rollout with K samples per prompt and group baselines in
place of the critic.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import flax.struct
import jax
from flax import nnx

from rlhf_jax import losses
from rlhf_jax.rewards import WeightedFunction
from rlhf_jax.training.optimizer import OptimizerConfig


@dataclasses.dataclass(frozen=True, kw_only=True)
class PPOConfig:
    # Rollouts
    response_length: int = 32  # N: fixed sampling length (static shapes)
    temperature: float = 0.7  # sampling temperature, also used to re-score (logits ÷ T)
    missing_eos_penalty: float | None = -1.0  # score of a response with no EOS (None: keep)
    # Reward
    normalize_reward: bool = True  # gain/bias so RM scores of SFT samples have mean 0, std 1
    reward_norm_prompts: int = 256  # prompts sampled (from the SFT policy) to fit them
    whiten_scores: bool = False  # whiten scores per batch without shifting the mean
    score_clip: float | None = None  # clip scores to ±score_clip after normalisation
    # KL to the reference (SFT) policy
    kl_coef: float | None = None  # β (initial, when adaptive); None: 0.05 with GAE, 0 for GRPO/RLOO
    kl_target: float | None = None  # adaptive controller target (Ziegler et al.: 6); None fixed
    kl_horizon: float = 10000  # adaptive controller horizon in episodes
    kl_estimator: str = "k1"  # k1 | k2 | k3 | abs, per token
    kl_in_loss: bool = False  # add β·KL to the policy loss instead of the reward
    # Advantages
    advantage_estimator: Literal["gae", "rloo", "grpo"] = "gae"  # gae needs the critic
    value_model: Literal["separate", "shared"] = "separate"  # critic trunk: own, or the policy's
    value_init: Literal["reward", "policy"] = "reward"  # a separate critic's trunk starts from
    samples_per_prompt: int = 1  # K (rloo/grpo need K >= 2)
    # GRPO's advantage scale: the group's std, the batch's std (REINFORCE++), or none (Dr. GRPO)
    grpo_scale: Literal["group", "batch", "none"] = "group"
    # DAPO's dynamic sampling (rloo/grpo): groups whose scores are all equal teach nothing;
    # drop them and sample more prompts, up to max_sampling_rounds rollouts per iteration
    dynamic_sampling: bool = False
    max_sampling_rounds: int = 3
    gamma: float = 1.0  # discount
    lam: float = 0.95  # GAE λ
    whiten_advantages: bool = True  # whiten advantages over the batch
    # Losses
    # ppo: the clipped surrogate; gspo / gspo_token: sequence-level ratios (then set clip_eps
    # ~3e-4); cispo: clipped importance weights, every token's gradient kept
    policy_loss: Literal["ppo", "gspo", "gspo_token", "cispo"] = "ppo"
    clip_eps: float = 0.2  # policy ratio clip
    clip_eps_high: float | None = None  # asymmetric upper clip (DAPO); None = clip_eps
    dual_clip: float | None = None  # dual-clip bound for negative advantages (ppo)
    # Truncated importance weights min(π_old / π_sampler, cap) per token (off-policy correction
    # when the sampler's numerics differ from the trainer's); None: off
    tis_cap: float | None = None
    value_clip_eps: float | None = 0.2  # value clip around the rollout values (None: off)
    vf_coef: float = 0.1  # value loss weight
    entropy_coef: float = 0.0  # entropy bonus weight
    aggregation: str = "token_mean"  # token loss reduction (see losses.aggregate)
    # Update schedule
    ppo_epochs: int = 4  # passes over each batch of episodes
    num_minibatches: int = 2  # minibatches per pass (reshuffled every pass)
    grad_accum_steps: int = 1  # micro-batches per minibatch
    policy_optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
    critic_optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
    # Execution
    fuse_iteration: bool = False  # one XLA program per iteration (no per-phase timing)

    def __post_init__(self):
        def choice(field, allowed):
            if getattr(self, field) not in allowed:
                raise ValueError(
                    f"ppo.{field}={getattr(self, field)!r}; expected one of {tuple(allowed)}"
                )

        choice("advantage_estimator", ("gae", "rloo", "grpo"))
        choice("value_model", ("separate", "shared"))
        choice("value_init", ("reward", "policy"))
        choice("kl_estimator", losses.KL_ESTIMATORS)
        choice("aggregation", losses.AGGREGATIONS)
        choice("grpo_scale", ("group", "batch", "none"))
        choice("policy_loss", ("ppo", "gspo", "gspo_token", "cispo"))
        if self.dynamic_sampling and self.uses_critic:
            raise ValueError(
                "ppo.dynamic_sampling drops groups of equal scores; it needs "
                "advantage_estimator 'rloo' or 'grpo'"
            )
        if self.policy_loss == "gspo" and self.tis_cap is not None:
            raise ValueError(
                "ppo.tis_cap weights tokens; sequence-level GSPO has none (use gspo_token)"
            )
        if self.max_sampling_rounds < 1:
            raise ValueError(
                f"ppo.max_sampling_rounds must be >= 1; got {self.max_sampling_rounds}"
            )
        if self.advantage_estimator != "gae" and self.samples_per_prompt < 2:
            raise ValueError(
                f"ppo.advantage_estimator={self.advantage_estimator!r} needs "
                f"ppo.samples_per_prompt >= 2; got {self.samples_per_prompt}"
            )
        if self.temperature <= 0:
            raise ValueError(f"ppo.temperature must be > 0; got {self.temperature}")
        for field in ("ppo_epochs", "num_minibatches", "grad_accum_steps", "response_length"):
            if getattr(self, field) < 1:
                raise ValueError(f"ppo.{field} must be >= 1; got {getattr(self, field)}")

    @property
    def uses_critic(self) -> bool:
        return self.advantage_estimator == "gae"

    @property
    def initial_kl_coef(self) -> float:
        """β: ``kl_coef``, or by default 0.05 with a critic and 0 for GRPO/RLOO (as the
        critic-free literature now runs them)."""
        if self.kl_coef is not None:
            return self.kl_coef
        return 0.05 if self.uses_critic else 0.0

    @property
    def shared_value_head(self) -> bool:
        """The value head reads the policy's hidden states (one forward for both losses)."""
        return self.uses_critic and self.value_model == "shared"

    def optimizer_steps(self, iterations: int) -> int:
        """Optimizer steps of a run of ``iterations``: the schedules' length."""
        return iterations * self.ppo_epochs * self.num_minibatches


@flax.struct.dataclass
class PPOState:
    """Everything an iteration reads and writes; checkpointed whole."""

    step: jax.Array  # int32: completed iterations
    policy: Any  # nnx.State: policy Params
    policy_opt: Any  # optax state of the policy optimizer
    critic: Any  # nnx.State: critic Params (None without a critic)
    critic_opt: Any  # optax state of the critic optimizer (None without a critic)
    frozen: Any  # dict: reference and reward-model params, non-Param variables
    kl: losses.KLControllerState  # KL coefficient controller
    score_norm: jax.Array  # float32[2]: (gain, bias); score = gain · (r − bias)
    rng: jax.Array  # uint32[2] key data
    nonfinite_count: jax.Array  # int32: iterations whose update was refused (non-finite)
    first_nonfinite_step: jax.Array  # int32: the first such iteration, -1 if never


@dataclasses.dataclass(frozen=True)
class Statics:
    """What an iteration's programs close over: the models' graphdefs, the token ids that
    matter, and the reward's sources (the reward model, pooled how and weighted how; the
    jittable reward functions)."""

    policy: nnx.GraphDef
    critic: nnx.GraphDef | None
    reward: nnx.GraphDef | None  # None: no reward model
    eos_ids: tuple[int, ...]
    pad_id: int
    reward_pooling: str = "last"
    reward_weight: float = 1.0  # the reward model's weight in the score
    token_rewards: tuple[WeightedFunction, ...] = ()  # reward functions on token ids
