"""The PyTorch side of ``side_by_side.py``: TRL trainers (and HF ``generate``) on the shared
checkpoints.

Rows reward/dpo/sft run TRL 1.16's RewardTrainer/DPOTrainer/SFTTrainer (project .venv); row ppo
runs ``trl.experimental.ppo.PPOTrainer`` from TRL 1.12.0 (``.venv-trl112``: 1.16 has no
PPOTrainer); row generate runs HF ``generate`` as TRL's rollouts do. A step is timed inside the
trainer's own loop by a ``TrainerCallback``: from ``on_step_begin`` to ``on_step_end`` (forward,
backward, clipping, optimizer and scheduler step; batch collation is outside), and for PPO,
which has no ``on_step_begin``, from the end of one ``on_step_end`` to the next (the whole
iteration: rollout, scoring, epochs of minibatch updates, metric gathering).

    .venv/bin/python benchmarks/worker_trl.py --row sft --artifacts DIR   # speaks the protocol
"""

from __future__ import annotations

import argparse
import copy
import os
import tempfile
import time

import bench_common as bc
import numpy as np
import torch
import transformers
from datasets import Dataset


class StepServer(transformers.TrainerCallback):
    """Serves the trainer's steps on command: warm-up, READY, then one TIME per ``step``."""

    def __init__(self, warmup: int, info: dict):
        self.warmup, self.info, self.done, self.t0 = warmup, info, 0, None

    def on_train_begin(self, args, state, control, **kwargs):
        self.t0 = _now()

    def on_step_begin(self, args, state, control, **kwargs):
        self.t0 = _now()

    def on_step_end(self, args, state, control, **kwargs):
        seconds = _now() - self.t0
        self.done += 1
        if self.done == self.warmup:
            bc.ready(self.info)
        elif self.done > self.warmup:
            bc.report(seconds)
        if self.done >= self.warmup and bc.next_command() != "step":
            bc.quit_now()
        self.t0 = _now()


def _now() -> float:
    """Host time once the GPU's queued work is done (a CUDA step returns before it runs)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter()


def _load(cls, path, **kwargs):
    """float32 parameters on every side (transformers 5 would keep a checkpoint's dtype);
    bf16 runs compute in bfloat16 under autocast, as ours casts on use."""
    return cls.from_pretrained(path, dtype=torch.float32, **kwargs)


def common_args(output_dir: str) -> dict:
    return dict(
        output_dir=output_dir,
        per_device_train_batch_size=bc.TRAIN_BATCH,
        max_steps=1_000_000,
        learning_rate=bc.LEARNING_RATE,
        max_grad_norm=1.0,
        # The profile's precision and no activation recomputation, like our side (TRL defaults
        # to bf16 and gradient checkpointing): float32 on the CPU profile, float32 parameters
        # with bfloat16 autocast on the GPU ones.
        bf16=bc.DTYPE == "bfloat16",
        gradient_checkpointing=False,
        use_cpu=bc.DEVICE == "cpu",
        save_strategy="no",
        logging_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=0,
    )


def _tokenizer(path, **kwargs):
    """The benchmark's word-level tokenizer, by its own class: AutoTokenizer would pick the
    model family's tokenizer from config.json (Qwen2Tokenizer turns our words into nothing)."""
    return transformers.PreTrainedTokenizerFast.from_pretrained(path, **kwargs)


def _check_lengths(trainer, expected: dict) -> dict:
    """The tokenized rows TRL will train on have the lengths our side trains on, or we stop."""
    lengths = {k: len(trainer.train_dataset[0][k]) for k in expected}
    if lengths != expected:
        raise RuntimeError(f"TRL tokenized rows have lengths {lengths}; expected {expected}")
    return lengths


def run_reward(art, warmup, out):
    from trl import RewardConfig, RewardTrainer

    chosen, rejected = bc.pair_tokens()
    # TRL appends EOS: T − 1 words + EOS = T tokens.
    ds = Dataset.from_dict(
        {
            "chosen": [bc.text(r[:-1]) for r in chosen],
            "rejected": [bc.text(r[:-1]) for r in rejected],
        }
    )
    tok = _tokenizer(os.path.join(art, "rm"))
    model = _load(
        transformers.AutoModelForSequenceClassification, os.path.join(art, "rm"), num_labels=1
    )
    args = RewardConfig(**common_args(out))
    trainer = RewardTrainer(model=model, args=args, train_dataset=ds, processing_class=tok)
    info = _check_lengths(trainer, {"chosen_ids": bc.SEQ_LEN, "rejected_ids": bc.SEQ_LEN})
    trainer.add_callback(StepServer(warmup, info))
    trainer.train()


def run_dpo(art, warmup, out):
    from trl import DPOConfig, DPOTrainer

    chosen, rejected = bc.pair_tokens()
    p = bc.PROMPT_LEN
    # TRL joins prompt and response strings as they are: the leading space keeps the word
    # boundary, so the prompt is P tokens and the response N − 1 words + EOS.
    ds = Dataset.from_dict(
        {
            "prompt": [bc.text(r[:p]) for r in chosen],
            "chosen": [" " + bc.text(r[p:-1]) for r in chosen],
            "rejected": [" " + bc.text(r[p:-1]) for r in rejected],
        }
    )
    tok = _tokenizer(os.path.join(art, "lm"))
    model = _load(transformers.AutoModelForCausalLM, os.path.join(art, "lm"))
    ref = copy.deepcopy(model)
    args = DPOConfig(
        **common_args(out), beta=0.1, loss_type=["sigmoid"], precompute_ref_log_probs=False
    )
    trainer = DPOTrainer(
        model=model, ref_model=ref, args=args, train_dataset=ds, processing_class=tok
    )
    info = _check_lengths(
        trainer,
        {"prompt_ids": p, "chosen_ids": bc.RESPONSE_LEN, "rejected_ids": bc.RESPONSE_LEN},
    )
    trainer.add_callback(StepServer(warmup, info))
    trainer.train()


def run_sft(art, warmup, out):
    from trl import SFTConfig, SFTTrainer

    chosen, _ = bc.pair_tokens()
    p = bc.PROMPT_LEN
    ds = Dataset.from_dict(
        {
            "prompt": [bc.text(r[:p]) for r in chosen],
            "completion": [" " + bc.text(r[p:-1]) for r in chosen],
        }
    )
    tok = _tokenizer(os.path.join(art, "lm"))
    model = _load(transformers.AutoModelForCausalLM, os.path.join(art, "lm"))
    args = SFTConfig(**common_args(out), completion_only_loss=True, packing=False)
    trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok)
    info = _check_lengths(trainer, {"input_ids": bc.SEQ_LEN})
    trainer.add_callback(StepServer(warmup, info))
    trainer.train()


def run_generate(art, warmup, out):
    del out
    model = _load(transformers.AutoModelForCausalLM, os.path.join(art, "lm")).eval()
    # Inference in the compute dtype: bfloat16 weights on the GPU profiles (ours casts the
    # matrices once before its decode loop).
    device = "cuda" if bc.DEVICE == "gpu" else "cpu"
    model = model.to(device=device, dtype=getattr(torch, bc.DTYPE))
    prompt, mask = bc.ragged_prompts(bc.GEN_BATCH, bc.GEN_PROMPT)
    prompt_t = torch.from_numpy(prompt.astype(np.int64)).to(device)
    mask_t = torch.from_numpy(mask.astype(np.int64)).to(device)

    def step():
        with torch.no_grad():
            out = model.generate(
                prompt_t,
                attention_mask=mask_t,
                do_sample=False,
                max_new_tokens=bc.GEN_NEW,
                eos_token_id=None,  # every row generates every token, as on our side
                pad_token_id=bc.PAD,
            )
        assert out.shape[1] == bc.GEN_PROMPT + bc.GEN_NEW
        _now()

    bc.serve(step, warmup=warmup, info={"torch_threads": torch.get_num_threads()})


def run_ppo(art, warmup, out):
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    tok = _tokenizer(os.path.join(art, "lm"), padding_side="left")
    prompt, mask = bc.ragged_prompts(bc.PPO_BATCH, bc.PPO_PROMPT)
    ds = Dataset.from_dict(
        {"input_ids": [p[m].tolist() for p, m in zip(prompt, mask, strict=True)]}
    )
    policy = _load(transformers.AutoModelForCausalLM, os.path.join(art, "lm"))
    ref = _load(transformers.AutoModelForCausalLM, os.path.join(art, "lm"))
    reward = _load(
        transformers.AutoModelForSequenceClassification, os.path.join(art, "rm"), num_labels=1
    )
    value = _load(
        transformers.AutoModelForSequenceClassification, os.path.join(art, "rm"), num_labels=1
    )
    micro = bc.PPO_BATCH // bc.PPO_MINIBATCHES  # one micro-batch per minibatch
    kwargs = common_args(out)
    kwargs.pop("max_steps")
    kwargs.update(
        per_device_train_batch_size=micro,
        gradient_accumulation_steps=bc.PPO_MINIBATCHES,
        num_mini_batches=bc.PPO_MINIBATCHES,
        num_ppo_epochs=bc.PPO_EPOCHS,
        total_episodes=bc.PPO_BATCH * 100_000,
        local_rollout_forward_batch_size=bc.PPO_BATCH,
        response_length=bc.PPO_RESPONSE,
        temperature=bc.PPO_TEMPERATURE,
        kl_coef=bc.PPO_KL_COEF,
        learning_rate=bc.PPO_LR,
        stop_token="eos",
        missing_eos_penalty=1.0,
        num_sample_generations=0,
    )
    kwargs.pop("logging_strategy")
    args = PPOConfig(**kwargs, logging_steps=1_000_000)
    trainer = PPOTrainer(
        args=args,
        processing_class=tok,
        model=policy,
        ref_model=ref,
        reward_model=reward,
        value_model=value,
        train_dataset=ds,
    )
    trainer.add_callback(StepServer(warmup, {"batch_size": args.batch_size}))
    trainer.train()


ROWS = {"reward": run_reward, "dpo": run_dpo, "sft": run_sft, "generate": run_generate}
ROWS["ppo"] = run_ppo


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--row", choices=sorted(ROWS), required=True)
    parser.add_argument("--artifacts", required=True)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as out:
        ROWS[args.row](args.artifacts, args.warmup, out)
    bc.quit_now()


if __name__ == "__main__":
    main()
