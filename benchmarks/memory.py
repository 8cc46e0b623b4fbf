"""Memory and program size of every phase's step, compiled on the CPU from abstract shapes.

Nothing is allocated or run: each step is built exactly as the phases build it (``place_model``
with a random init, ``init_train_state`` + ``jit_train_step`` with the phase's loss;
``init_ppo_state`` + ``build_iteration`` for PPO), all under ``jax.eval_shape``, then lowered
and compiled for the CPU. XLA's buffer assignment gives the bytes of the step's arguments,
outputs and temporaries; the optimised HLO gives the program size and the largest array with a
vocabulary-sized axis (a full B × T × V float32 logits array shows up there). CPU numbers are
not a GPU's (XLA:GPU fuses and schedules differently) but they move together: a program that
grows with depth, or an array that should not exist, shows here first.

    .venv/bin/python benchmarks/memory.py                         # every step, gpu + gpu-1.5b
    .venv/bin/python benchmarks/memory.py --steps trunk --layers 2,24 --set remat=block
    .venv/bin/python benchmarks/memory.py --profiles qwen2-smoke --json /tmp/memory.json

Steps: ``trunk`` (forward + backward of ``CausalLM.hidden_states`` alone, the model's own
cost), ``sft``, ``reward``, ``dpo`` (packed pairs with their prompt shared, the phases'
default; DPO with its reference in the step), ``ppo_rollout``, ``ppo_score``, ``ppo_update``
(the three programs of a PPO iteration; policy, reference, reward model and a critic started
from the reward model, as the side-by-side PPO row). ``--set field=value`` overrides model
config fields (e.g. ``remat=block``). ``--lora R`` trains rank-R adapters on every projection
(q, k, v, o, gate, up, down) over the frozen weights instead, with the reference (DPO, PPO) the
base with its adapters off and the critic's adapters on a frozen copy of its trunk:

    .venv/bin/python benchmarks/memory.py --steps sft,dpo,ppo_update --lora 16
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import re
import sys
import tempfile
import time

os.environ["JAX_PLATFORMS"] = "cpu"  # compiled for the CPU whatever the profile says
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_common as bc
import jax
import jax.numpy as jnp
import numpy as np

from rlhf_jax import data, models, sharding
from rlhf_jax.placement import ModelSource, place_model
from rlhf_jax.training import dpo, reward, sft
from rlhf_jax.training import ppo as ppo_lib
from rlhf_jax.training import state as state_lib
from rlhf_jax.training.optimizer import OptimizerConfig, make_optimizer

STEPS = ("trunk", "sft", "reward", "dpo", "ppo_rollout", "ppo_score", "ppo_update")
TRUNK_BATCH, TRUNK_LEN = 16, 512  # the trunk step's rows: the 16 × 512
LORA: models.LoraConfig | None = None  # --lora: adapters on every projection
LORA_TARGETS = ("q", "k", "v", "o", "gate", "up", "down")


def model_config(p: dict, overrides: dict) -> models.ModelConfig:
    """The profile's architecture as our ModelConfig (its HF config, converted)."""
    common = dict(
        vocab_size=p["vocab"], hidden_size=p["width"], intermediate_size=p["mlp"],
        num_hidden_layers=p["layers"], num_attention_heads=p["heads"],
        num_key_value_heads=p["kv_heads"], bos_token_id=bc.BOS, eos_token_id=bc.EOS,
        pad_token_id=bc.PAD, tie_word_embeddings=p["tied"],
    )  # fmt: skip
    if p["family"] == "qwen2":
        raw = dict(common, model_type="qwen2", max_position_embeddings=32768, rms_norm_eps=1e-6)
        raw |= dict(hidden_act="silu", rope_theta=1e6)
    else:
        raw = dict(common, model_type="llama", max_position_embeddings=2048, rms_norm_eps=1e-6)
        raw |= dict(hidden_act="silu")
    cfg = models.from_hf_dict(raw, source=f"profile {p}", dtype=p["dtype"])
    return cfg.replace(**overrides)


def _source(cfg) -> ModelSource:
    """A random init of ``cfg``, its dtypes and step settings as they are."""
    return ModelSource(init=cfg, dtype=cfg.dtype, param_dtype=cfg.param_dtype, lora=LORA)


def _spec(tree):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype), tree)


def _rows(p: dict, rows: int, window: bool = True) -> dict:
    """Full-length rows whose loss covers the response (as the side-by-side workers build)."""
    t = p["prompt_len"] + p["response_len"]
    positions = np.broadcast_to(np.arange(t, dtype=np.int32), (rows, t)).copy()
    batch = {
        "tokens_BxT": np.full((rows, t), 3, np.int32),
        "positions_BxT": positions,
        "attn_mask_BxT": np.ones((rows, t), bool),
        "loss_mask_BxT": positions >= p["prompt_len"],
    }
    if window:
        w = data.window_indices(batch["loss_mask_BxT"], p["response_len"])
        batch["window_BxW"], batch["window_mask_BxW"] = w
    return batch


def _pairs(p: dict) -> dict:
    batch = {}
    for side in ("chosen", "rejected"):
        batch |= {f"{side}_{k}": v for k, v in _rows(p, p["train_batch"]).items()}
    batch["example_mask_B"] = np.ones(p["train_batch"], np.float32)
    return batch


def _train_step(cfg, head, loss_fn, batch, *, reference=False):
    mesh = sharding.make_mesh(sharding.MeshConfig(num_devices=1))
    tx = make_optimizer(OptimizerConfig(learning_rate=1e-5, max_grad_norm=1.0), total_steps=1000)
    held = {}

    def build():
        model = place_model(_source(cfg), head=head, mesh=mesh)
        state, shardings = state_lib.init_train_state(
            model, tx, seed=0, frozen_extra=model.params if reference and LORA is None else None
        )
        held.update(graphdef=model.graphdef, shardings=shardings)
        return state

    state = jax.eval_shape(build)
    loss = functools.partial(loss_fn, graphdef=held["graphdef"])
    step = state_lib.jit_train_step(loss, tx, held["shardings"], mesh)
    return step, (state, _spec(batch))


def _trunk(cfg, p):
    mesh = sharding.make_mesh(sharding.MeshConfig(num_devices=1))
    held = {}

    def build():
        model = place_model(_source(cfg), head="lm", mesh=mesh)
        held["graphdef"] = model.graphdef
        return model.params, model.rest

    params, rest = jax.eval_shape(build)
    b, t = TRUNK_BATCH, TRUNK_LEN

    def loss(params, rest, tokens):
        from flax import nnx

        model = nnx.merge(held["graphdef"], params, rest)
        positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
        h = model.hidden_states(tokens, positions_BxT=positions, attn_mask_BxT=tokens > 0)
        return jnp.mean(h.astype(jnp.float32) ** 2)

    fn = jax.jit(jax.grad(loss))
    return fn, (params, rest, jax.ShapeDtypeStruct((b, t), jnp.int32))


def _ppo(cfg, p, which: str):
    mesh = sharding.make_mesh(sharding.MeshConfig(num_devices=1))
    opt = OptimizerConfig(learning_rate=bc.PPO_LR, max_grad_norm=1.0)
    ppo = ppo_lib.PPOConfig(
        response_length=p["ppo_response"], temperature=bc.PPO_TEMPERATURE,
        kl_coef=bc.PPO_KL_COEF, normalize_reward=False, ppo_epochs=bc.PPO_EPOCHS,
        num_minibatches=bc.PPO_MINIBATCHES, value_init="reward", policy_optimizer=opt,
        critic_optimizer=opt,
    )  # fmt: skip
    held = {}
    with tempfile.TemporaryDirectory() as tok_dir:
        _word_tokenizer(tok_dir)
        source = dataclasses.replace(_source(cfg), tokenizer=tok_dir)
        frozen = dataclasses.replace(source, lora=None)  # the reward model does not train
        config = ppo_lib.PPORunConfig(
            run_dir=os.path.join(tok_dir, "run"), policy=source, reward=frozen,
            prompts="(unused)", prompt_length=p["ppo_prompt"],
            prompts_per_iteration=p["ppo_batch"], ppo=ppo, mesh=sharding.MeshConfig(num_devices=1),
        )  # fmt: skip

        def build():
            state, shardings, statics, _, _ = ppo_lib.init_ppo_state(config, mesh)
            held.update(shardings=shardings, statics=statics)
            return state

        state = jax.eval_shape(build)
    fns = ppo_lib.build_iteration(
        held["statics"], ppo, held["shardings"], iterations=config.iterations
    )
    prompt = jax.ShapeDtypeStruct((p["ppo_batch"], p["ppo_prompt"]), jnp.int32)
    mask = jax.ShapeDtypeStruct((p["ppo_batch"], p["ppo_prompt"]), jnp.bool_)
    if which == "ppo_rollout":
        return fns["rollout"], (state, prompt, mask)
    episodes = jax.eval_shape(fns["rollout"], state, prompt, mask)
    if which == "ppo_score":
        return fns["score"], (state, episodes)
    episodes, _, _ = jax.eval_shape(fns["score"], state, episodes)
    return fns["update"], (state, episodes)


def _word_tokenizer(directory: str) -> None:
    """A word-level tokenizer (PPO's setup reads its pad and EOS ids)."""
    import tokenizers
    import transformers

    vocab = {"<pad>": bc.PAD, "<s>": bc.BOS, "</s>": bc.EOS, "w3": 3}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>"
    )
    fast.save_pretrained(directory)


def build(step: str, cfg, p):
    if step == "trunk":
        return _trunk(cfg, p)
    if step == "sft":
        return _train_step(cfg, "lm", sft.sft_loss, _rows(p, p["train_batch"]))
    if step == "reward":
        loss = functools.partial(reward.reward_pair_loss, config=reward.RewardLossConfig())
        return _train_step(cfg, "reward", loss, _pairs(p))
    if step == "dpo":
        loss = functools.partial(dpo.dpo_step_loss, config=dpo.DPOLossConfig(beta=0.1))
        return _train_step(cfg, "lm", loss, _pairs(p), reference=True)
    return _ppo(cfg, p, step)


_SHAPE = re.compile(r"\b(f32|bf16|f16)\[([0-9,]+)\]")


def vocab_arrays(hlo: str, vocab: int, width: int) -> dict:
    """The largest activation in the optimised HLO with an axis of size ``vocab`` (and its
    dtype): logits, log-softmaxes and their gradients. The (V, D) embedding or LM head and its
    gradient are not counted."""
    best = {"elements": 0, "shape": None, "dtype": None}
    for dtype, dims in _SHAPE.findall(hlo):
        shape = tuple(int(d) for d in dims.split(","))
        if vocab in shape and len(shape) >= 2 and sorted(shape) != sorted((vocab, width)):
            n = int(np.prod(shape))
            if n > best["elements"]:
                best = {"elements": n, "shape": list(shape), "dtype": dtype}
    size = {"f32": 4, "bf16": 2, "f16": 2}.get(best["dtype"], 0)
    best["bytes"] = best["elements"] * size
    return best


def measure(step: str, cfg, p) -> dict:
    t0 = time.perf_counter()
    fn, args = build(step, cfg, p)
    lowered = fn.lower(*args)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    mem = compiled.memory_analysis()
    hlo = compiled.as_text()
    return {
        "step": step,
        "layers": cfg.num_layers,
        "temp_bytes": int(mem.temp_size_in_bytes),
        "argument_bytes": int(mem.argument_size_in_bytes),
        "output_bytes": int(mem.output_size_in_bytes),
        "alias_bytes": int(mem.alias_size_in_bytes),
        "hlo_lines": hlo.count("\n"),
        "trace_lower_s": round(t1 - t0, 2),
        "compile_s": round(t2 - t1, 2),
        "largest_vocab_array": vocab_arrays(hlo, cfg.vocab_size, cfg.hidden_size),
    }


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f}"


def table(rows: list[dict]) -> str:
    lines = [
        "| profile | step | layers | settings | temp GB | args GB | out GB | HLO lines "
        "| compile s | largest V-array |",
        "|---|---|--:|---|--:|--:|--:|--:|--:|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['profile']} | {r['step']} | | | failed: {r['error'][:120]!r} |")
            continue
        v = r["largest_vocab_array"]
        varr = f"{v['dtype']}{v['shape']} {_gb(v['bytes'])} GB" if v["shape"] else "none"
        settings = ", ".join(f"{k}={val}" for k, val in r["settings"].items()) or "defaults"
        lines.append(
            f"| {r['profile']} | {r['step']} | {r['layers']} | {settings} | "
            f"{_gb(r['temp_bytes'])} | {_gb(r['argument_bytes'])} | {_gb(r['output_bytes'])} | "
            f"{r['hlo_lines']:,} | {r['compile_s']:.1f} | {varr} |"
        )
    return "\n".join(lines)


def _value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", default="gpu,gpu-1.5b")
    parser.add_argument("--steps", default=",".join(STEPS))
    parser.add_argument("--layers", help="comma-separated layer counts (default: the profile's)")
    parser.add_argument("--set", action="append", default=[], help="model config field=value")
    parser.add_argument("--json", help="write the rows here as JSON")
    parser.add_argument("--lora", type=int, default=0, help="train rank-R adapters (0: off)")
    args = parser.parse_args()
    global LORA
    if args.lora:
        LORA = models.LoraConfig(rank=args.lora, alpha=2.0 * args.lora, targets=LORA_TARGETS)
    overrides = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--set {item!r}: expected field=value")
        overrides[key] = _value(value)
    steps = args.steps.split(",")
    unknown = sorted(set(steps) - set(STEPS))
    if unknown:
        parser.error(f"unknown steps {unknown}; expected some of {STEPS}")
    rows = []
    for name in args.profiles.split(","):
        if name not in bc.PROFILES:
            parser.error(f"unknown profile {name!r}; expected one of {sorted(bc.PROFILES)}")
        p = bc.PROFILES[name]
        layer_counts = [int(n) for n in args.layers.split(",")] if args.layers else [p["layers"]]
        for layers in layer_counts:
            cfg = model_config(dict(p, layers=layers), overrides)
            for step in steps:
                print(f"== {name} {step} ({layers} layers)", file=sys.stderr, flush=True)
                try:
                    row = measure(step, cfg, p)
                except Exception as e:  # a failed step is a row, not the end of the report
                    row = {"step": step, "layers": layers, "error": f"{type(e).__name__}: {e}"}
                settings = overrides | ({"lora": args.lora} if args.lora else {})
                row |= {"profile": name, "settings": settings}
                rows.append(row)
                print(json.dumps(row), flush=True)
    print(table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"jax": jax.__version__, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
