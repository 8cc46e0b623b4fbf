"""rlhf_jax: RLHF (SFT, reward models, PPO, DPO, evaluation) as pure, jit-compiled JAX steps."""

__version__ = "0.1.0"
