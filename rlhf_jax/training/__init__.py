"""Training: one loop that drives every phase, and per phase its config, loss and pure step.

    optimizer.py  OptimizerConfig → optax (the schedule spans the phase's steps)
    grads.py      gradients from micro-batches, and the non-finite guard (every phase, PPO too)
    state.py      TrainState and the offline phases' one jitted update step
    loop.py       Run: metrics, checkpoints, resume, SIGTERM, the non-finite stop — every phase
    phase.py      PhaseConfig, Phase, run_phase: an offline phase end to end
    responses.py  the positions that predict response tokens (the LM head runs only there)
    pairs.py      a preference pair's one forward, packed with its prompt shared or as two rows
    sft.py        SFT: its loss and PHASE
    reward.py     reward model: RewardLossConfig, Bradley–Terry / ranking losses, PHASE
    dpo.py        DPO family: DPOLossConfig, the loss, the reference, PHASE
    ppo/          PPO, RLOO, GRPO: config, experience, update, programs, runner
    entry.py      ConfigDict → a phase run (the experiments/ scripts' entry point)
    config.py     the ConfigDict edge: dataclasses to ConfigDicts and back
Models come onto the mesh through `rlhf_jax.placement`.
"""
