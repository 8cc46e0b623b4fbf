"""Our side of ``side_by_side.py``: rlhf_jax steps on the shared checkpoints.

Each row builds exactly what a user's run builds — ``place_model`` (the model from the HF
checkpoint onto the mesh) + ``init_train_state`` + ``jit_train_step`` with the phase's loss
(reward/dpo/sft; pairs packed with their prompt shared, the phases' default; rows
``reward_unpacked``/``dpo_unpacked`` run each pair as two rows), ``generate`` (generation),
``init_ppo_state`` + ``build_iteration`` (PPO: the three jitted programs rollout, score,
update, as ``run_ppo`` runs them, or the fused one-program iteration with row ``ppo_fused``) —
on a one-device mesh, and times one call to completion
(``block_until_ready``; PPO also fetches its metrics to the host, as TRL's iteration does).

    .venv/bin/python benchmarks/worker_ours.py --row sft --artifacts DIR   # speaks the protocol
"""

from __future__ import annotations

import argparse
import functools
import os
import tempfile
import time

import bench_common as bc

os.environ.setdefault("JAX_PLATFORMS", bc.JAX_PLATFORMS)

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rlhf_jax import data, models, sharding
from rlhf_jax.generation import SamplingConfig, generate
from rlhf_jax.placement import ModelSource, place_model
from rlhf_jax.training import dpo, reward, sft
from rlhf_jax.training import ppo as ppo_lib
from rlhf_jax.training import state as state_lib
from rlhf_jax.training.optimizer import OptimizerConfig, make_optimizer

LORA = "lora" in bc.MODEL_OPTIONS
FROZEN_OPTIONS = {k: v for k, v in bc.MODEL_OPTIONS.items() if k != "lora"}  # the reward model


def _mesh():
    return sharding.make_mesh(sharding.MeshConfig(num_devices=1))


def _sequences(tokens_BxT, window=True):
    """Full-length rows ending in EOS; the loss covers the response (positions ≥ P).

    With the response window `rlhf_jax.data` adds to SFT/preference batches: the bucket list
    (64, 128) puts these rows in bucket 128 with a window of 64, so the LM head runs on the 64
    positions that predict the response.
    """
    tokens = tokens_BxT.copy()
    tokens[:, -1] = bc.EOS
    b, t = tokens.shape
    positions = np.broadcast_to(np.arange(t, dtype=np.int32), (b, t)).copy()
    attn = np.ones((b, t), bool)
    loss = positions >= bc.PROMPT_LEN
    batch = {
        "tokens_BxT": tokens,
        "positions_BxT": positions,
        "attn_mask_BxT": attn,
        "loss_mask_BxT": loss,
    }
    if window:
        batch["window_BxW"], batch["window_mask_BxW"] = data.window_indices(loss, bc.RESPONSE_LEN)
    return batch


def _pairs(window=True):
    chosen, rejected = bc.pair_tokens()
    batch = {}
    for side, tokens in (("chosen", chosen), ("rejected", rejected)):
        batch.update({f"{side}_{k}": v for k, v in _sequences(tokens, window).items()})
    batch["example_mask_B"] = np.ones(bc.TRAIN_BATCH, np.float32)
    return batch


def _train_step_server(model, loss_fn, batch, warmup, *, reference=False):
    mesh = model.mesh
    opt = OptimizerConfig(learning_rate=bc.LEARNING_RATE, max_grad_norm=1.0)
    tx = make_optimizer(opt, total_steps=1000)
    state, shardings = state_lib.init_train_state(
        model, tx, seed=0, frozen_extra=model.params if reference and not LORA else None
    )  # under LoRA the reference is the base, its adapters off
    step = state_lib.jit_train_step(
        functools.partial(loss_fn, graphdef=model.graphdef), tx, shardings, mesh
    )
    batch = sharding.shard_batch(batch, mesh)
    holder = {"state": state}

    def one():
        holder["state"], metrics = step(holder["state"], batch)
        jax.block_until_ready((holder["state"], metrics))

    bc.serve(one, warmup=warmup, info={"jax": jax.__version__, "traces": 1})
    assert step._cache_size() == 1


def _place(art, name, head):
    source = ModelSource(hf_path=os.path.join(art, name), dtype=bc.DTYPE, **bc.MODEL_OPTIONS)
    return place_model(source, head=head, mesh=_mesh())


def run_reward(art, warmup, *, share_prompt=True):
    config = reward.RewardLossConfig(share_prompt=share_prompt)
    loss = functools.partial(reward.reward_pair_loss, config=config)
    # The window keys are what the packed pair needs (the reward loss has no LM head).
    _train_step_server(_place(art, "rm", "reward"), loss, _pairs(window=share_prompt), warmup)


def run_dpo(art, warmup, *, window=True, share_prompt=True):
    config = dpo.DPOLossConfig(beta=0.1, share_prompt=share_prompt)
    loss = functools.partial(dpo.dpo_step_loss, config=config)
    _train_step_server(_place(art, "lm", "lm"), loss, _pairs(window), warmup, reference=True)


def run_sft(art, warmup, *, window=True):
    chosen, _ = bc.pair_tokens()
    _train_step_server(_place(art, "lm", "lm"), sft.sft_loss, _sequences(chosen, window), warmup)


def run_generate(art, warmup):
    model = models.load_pretrained(os.path.join(art, "lm"), dtype=bc.DTYPE)
    graphdef, params = nnx.split(model)
    prompt, mask = bc.ragged_prompts(bc.GEN_BATCH, bc.GEN_PROMPT)
    prompt, mask = jnp.asarray(prompt), jnp.asarray(mask)
    # Greedy with EOS disabled: every row generates every token (as benchmarks/generate.py).
    config = SamplingConfig(max_new_tokens=bc.GEN_NEW, temperature=0.0, eos_ids=(), pad_id=bc.PAD)

    def one():
        out = generate(graphdef, params, prompt, mask, jax.random.key(0), config=config)
        jax.block_until_ready(out)

    bc.serve(one, warmup=warmup)


def run_ppo(art, warmup, *, fused=False):
    opt = OptimizerConfig(learning_rate=bc.PPO_LR, max_grad_norm=1.0)
    ppo = ppo_lib.PPOConfig(
        response_length=bc.PPO_RESPONSE,
        temperature=bc.PPO_TEMPERATURE,
        kl_coef=bc.PPO_KL_COEF,
        normalize_reward=False,  # TRL's PPOTrainer has no reward normalisation
        ppo_epochs=bc.PPO_EPOCHS,
        num_minibatches=bc.PPO_MINIBATCHES,
        value_init="reward",  # the critic starts from the reward model, as TRL's value model
        policy_optimizer=opt,
        critic_optimizer=opt,
        fuse_iteration=fused,
    )
    with tempfile.TemporaryDirectory() as run_dir:
        config = ppo_lib.PPORunConfig(
            run_dir=run_dir,
            policy=ModelSource(hf_path=os.path.join(art, "lm"), dtype=bc.DTYPE, **bc.MODEL_OPTIONS),
            reward=ModelSource(hf_path=os.path.join(art, "rm"), dtype=bc.DTYPE, **FROZEN_OPTIONS),
            prompts="(unused)",
            prompt_length=bc.PPO_PROMPT,
            prompts_per_iteration=bc.PPO_BATCH,
            ppo=ppo,
            mesh=sharding.MeshConfig(num_devices=1),
        )
        mesh = sharding.make_mesh(config.mesh)
        state, shardings, statics, _, _ = ppo_lib.init_ppo_state(config, mesh)
    fns = ppo_lib.build_iteration(statics, ppo, shardings, iterations=config.iterations)
    prompt, mask = bc.ragged_prompts(bc.PPO_BATCH, bc.PPO_PROMPT)
    batch = sharding.shard_batch({"t": prompt, "m": mask}, mesh)
    holder = {"state": state}

    def one():
        state, parts = holder["state"], {}
        t0 = time.perf_counter()
        if fused:
            state, metrics, _, _ = fns["fused"](state, batch["t"], batch["m"])
        else:
            # Each program is waited for, to time the split; the next one could not start
            # earlier anyway, since it needs the previous one's output.
            episodes = jax.block_until_ready(fns["rollout"](state, batch["t"], batch["m"]))
            t1 = time.perf_counter()
            episodes, ep_metrics, _ = jax.block_until_ready(fns["score"](state, episodes))
            t2 = time.perf_counter()
            state, up_metrics = fns["update"](state, episodes)
            metrics = {**ep_metrics, **up_metrics}
            parts = {"rollout": t1 - t0, "score": t2 - t1}
        holder["state"] = state
        jax.device_get(metrics)  # the host logs them, as TRL's .item() calls do
        jax.block_until_ready(state)
        if parts:
            parts["update"] = time.perf_counter() - t0 - parts["rollout"] - parts["score"]
        return parts

    bc.serve(one, warmup=warmup, info={"fused": fused})


ROWS = {
    "reward": run_reward,
    "dpo": run_dpo,
    "sft": run_sft,
    "generate": run_generate,
    "ppo": run_ppo,
    "ppo_fused": functools.partial(run_ppo, fused=True),
    "sft_full": functools.partial(run_sft, window=False),
    "dpo_full": functools.partial(run_dpo, window=False),  # unpacked too: packing needs W
    # Chosen and rejected as two rows each (no prompt sharing), for comparison.
    "reward_unpacked": functools.partial(run_reward, share_prompt=False),
    "dpo_unpacked": functools.partial(run_dpo, share_prompt=False),
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--row", choices=sorted(ROWS), required=True)
    parser.add_argument("--artifacts", required=True)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    ROWS[args.row](args.artifacts, args.warmup)


if __name__ == "__main__":
    main()
