"""The Tunix side of ``side_by_side.py`` (google-tunix 0.1.7, in ``.venv-tunix``).

Tunix's own Llama3 model, loaded from the shared HF safetensors with its
``create_model_from_safe_tensors``; SFT with ``PeftTrainer`` (full fine-tuning, its default
masked NLL), DPO with its ``DPOTrainer`` (tokenized ``TrainingInput``, in-step reference), and
generation with its ``Sampler``. Tunix's trainers dispatch steps asynchronously; with
``max_inflight_computations=1`` the previous step has finished when the next step's
``on_train_step_start`` hook runs, so a step is timed from one hook call to the next (the whole
loop iteration: input preparation, the jitted step, metric logging). Input preparation (DPO's
reference forward) is made to finish before the hook (``_synchronous_inputs``), so none of
Tunix's work runs while another side is timed. Rows that Tunix 0.1.7 cannot run print
``UNSUPPORTED <reason>``.

    .venv-tunix/bin/python benchmarks/worker_tunix.py --row sft --artifacts DIR
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import bench_common as bc
import jax
import jax.numpy as jnp
import numpy as np
import optax

UNSUPPORTED = {
    "reward": "Tunix 0.1.7 has no reward-model (scalar-head, pairwise) trainer",
    "ppo": (
        "Tunix 0.1.7's PpoLearner needs its RLCluster (rollout engine, role meshes, tokenizer "
        "adapter, reward functions); not wired up here yet"
    ),
}


def _model(art):
    from tunix.models.llama3 import model as llama
    from tunix.models.llama3 import params

    config = llama.ModelConfig(
        num_layers=bc.LAYERS,
        vocab_size=bc.VOCAB,
        embed_dim=bc.WIDTH,
        hidden_dim=bc.MLP,
        num_heads=bc.HEADS,
        head_dim=bc.WIDTH // bc.HEADS,
        num_kv_heads=bc.HEADS,
        rope_theta=10_000,
        norm_eps=1e-6,
    )
    auto = jax.sharding.AxisType.Auto  # tunix shards with with_sharding_constraint
    mesh = jax.make_mesh((1, 1), ("fsdp", "tp"), axis_types=(auto, auto))
    with mesh:
        model = params.create_model_from_safe_tensors(
            os.path.join(art, "lm"), config, mesh, dtype=jnp.float32
        )
    return model, config, mesh


class StepHooks:
    """Training hooks serving the trainer's steps on command (see the module docstring)."""

    def __init__(self, warmup):
        self.warmup, self.seen, self.t0 = warmup, 0, None

    def on_train_start(self, trainer):
        pass

    def on_train_end(self, trainer):
        pass

    def on_train_step_start(self, trainer):
        now = time.perf_counter()
        if self.t0 is not None:
            self.seen += 1
            if self.seen == self.warmup:
                bc.ready({"jax": jax.__version__})
            elif self.seen > self.warmup:
                bc.report(now - self.t0)
            if self.seen >= self.warmup and bc.next_command() != "step":
                bc.quit_now()
        self.t0 = time.perf_counter()

    def on_train_step_end(self, trainer, *args, **kwargs):
        pass

    def on_eval_step_start(self, trainer):
        pass

    def on_eval_step_end(self, trainer, *args, **kwargs):
        pass


def _synchronous_inputs(trainer):
    """Makes the trainer's input preparation finish before its step-start hook runs.

    Tunix prepares the next step's inputs (for DPO: the reference model's log-probs, a jitted
    forward) before it waits for the current step and calls ``on_train_step_start``, and JAX
    dispatches that work asynchronously. Left so, the preparation would run on the CPU after
    this worker has reported its step, while the next side of the row is being timed: the
    other side slows down and Tunix's own time misses it. Waiting for the prepared inputs keeps
    all of Tunix's step inside its own timed interval.
    """
    prepare = trainer._prepare_inputs
    trainer._prepare_inputs = lambda example: jax.block_until_ready(prepare(example))
    return trainer


def _hooks(warmup):
    from tunix.sft import hooks

    class Hooks(StepHooks, hooks.TrainingHooks):
        pass

    return Hooks(warmup)


def _optimizer():
    return optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(bc.LEARNING_RATE))


def _forever(example):
    while True:
        yield example


def run_sft(art, warmup):
    from tunix.sft import peft_trainer, utils

    model, _, mesh = _model(art)
    chosen, _ = bc.pair_tokens()
    tokens = chosen.copy()
    tokens[:, -1] = bc.EOS
    loss_mask = np.broadcast_to(np.arange(bc.SEQ_LEN) >= bc.PROMPT_LEN, tokens.shape).copy()
    example = peft_trainer.TrainingInput(input_tokens=tokens, input_mask=loss_mask)

    def model_input(x):
        # Every token is real; the loss mask selects the response.
        attn = jnp.ones_like(x.input_mask)
        return {
            "input_tokens": x.input_tokens,
            "input_mask": x.input_mask,
            "positions": utils.build_positions_from_mask(attn),
            "attention_mask": utils.make_causal_attn_mask(attn),
        }

    config = peft_trainer.TrainingConfig(
        eval_every_n_steps=10**9,
        max_steps=10**6,
        max_inflight_computations=1,
        pbar_description=None,
    )
    with mesh:
        trainer = peft_trainer.PeftTrainer(model, _optimizer(), config)
        trainer = _synchronous_inputs(trainer.with_gen_model_input_fn(model_input))
        trainer.with_training_hooks(_hooks(warmup))
        trainer.train(_forever(example))


def run_dpo(art, warmup):
    from tunix.sft.dpo import dpo_trainer

    model, _, mesh = _model(art)
    ref, _, _ = _model(art)
    chosen, rejected = bc.pair_tokens()
    p = bc.PROMPT_LEN
    c, r = chosen[:, p:].copy(), rejected[:, p:].copy()
    c[:, -1] = r[:, -1] = bc.EOS
    ones = lambda x: np.ones(x.shape, np.int32)
    example = dpo_trainer.TrainingInput(
        prompt_ids=chosen[:, :p],
        prompt_mask=ones(chosen[:, :p]),
        chosen_ids=c,
        chosen_mask=ones(c),
        rejected_ids=r,
        rejected_mask=ones(r),
    )
    config = dpo_trainer.DPOTrainingConfig(
        eval_every_n_steps=10**9,
        max_steps=10**6,
        max_inflight_computations=1,
        beta=0.1,
        pbar_description=None,
    )
    with mesh:
        trainer = _synchronous_inputs(dpo_trainer.DPOTrainer(model, ref, _optimizer(), config))
        trainer.with_training_hooks(_hooks(warmup))
        trainer.train(_forever(example))


def run_generate(art, warmup):
    import transformers
    from tunix.generate import sampler as sampler_lib

    model, config, mesh = _model(art)
    # By its own class: AutoTokenizer would pick the model family's tokenizer from config.json.
    tok = transformers.PreTrainedTokenizerFast.from_pretrained(os.path.join(art, "lm"))
    prompt, mask = bc.ragged_prompts(bc.GEN_BATCH, bc.GEN_PROMPT)
    strings = [bc.text(row[m]) for row, m in zip(prompt, mask, strict=True)]
    cache = sampler_lib.CacheConfig(
        # The sampler pads the prompt to a bucket of 64 and wants room beyond prompt + new.
        cache_size=2 * bc.GEN_PROMPT + bc.GEN_NEW + 8,
        num_layers=config.num_layers,
        num_kv_heads=config.num_kv_heads,
        head_dim=config.head_dim,
    )
    with mesh:
        sampler = sampler_lib.Sampler(model, tok, cache)

        def one():
            out = sampler(
                strings,
                max_generation_steps=bc.GEN_NEW,
                max_prompt_length=bc.GEN_PROMPT,
                temperature=0.0,
                eos_tokens=[],  # every row generates every token
            )
            jax.block_until_ready(out.tokens)

        bc.serve(one, warmup=warmup)


ROWS = {"sft": run_sft, "dpo": run_dpo, "generate": run_generate}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--row", required=True)
    parser.add_argument("--artifacts", required=True)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    if args.row not in ROWS:
        print("UNSUPPORTED " + UNSUPPORTED.get(args.row, f"no Tunix row {args.row!r}"), flush=True)
        return
    if bc.FAMILY != "llama" or bc.DTYPE != "float32":
        # The worker builds Tunix's Llama-3 module in float32 (the "cpu" profile's model).
        print(f"UNSUPPORTED profile {bc.PROFILE_NAME!r}: the Tunix worker runs the cpu profile")
        return
    ROWS[args.row](args.artifacts, args.warmup)
    bc.quit_now()


if __name__ == "__main__":
    main()
