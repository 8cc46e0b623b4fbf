"""``rlhf-jax export | generate | score | report``: using what training made.

    rlhf-jax export   runs/ppo/artifact out/policy [--dtype bfloat16] [--shard-mb 2000]
                      [--peft out/adapter]   (a LoRA run: its adapters for HF peft, too)
    rlhf-jax generate runs/ppo/artifact --prompt "How do I ..." [--prompts FILE] [--samples 4]
    rlhf-jax score    runs/reward/artifact --data pairs.jsonl [--out scores.jsonl]
    rlhf-jax report   runs/sft runs/reward runs/ppo [--out DIR]

MODEL is a phase artifact (``artifact.json``) or an HF checkpoint directory (``config.json``);
an artifact brings its own tokenizer, an HF checkpoint's is read from its directory, and
``--tokenizer`` overrides either.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

from rlhf_jax.cli import UsageError


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit status 2, like every other user error
        raise UsageError(f"{self.prog}: {message}")


def _source(path: str, *, tokenizer: str | None, dtype: str = "float32"):
    """The `ModelSource` of an artifact or HF checkpoint directory, and its head."""
    from rlhf_jax import checkpoint as ckpt_lib
    from rlhf_jax import models
    from rlhf_jax.placement import ModelSource

    directory = pathlib.Path(path).expanduser()
    if (directory / ckpt_lib.ARTIFACT_META).is_file():
        head = ckpt_lib.read_artifact_meta(directory).get("head", "lm")
        return ModelSource(artifact=str(directory), tokenizer=tokenizer, dtype=dtype), head
    if (directory / "config.json").is_file():
        head = "reward" if models.has_score_head(directory) else "lm"
        return ModelSource(hf_path=str(directory), tokenizer=tokenizer, dtype=dtype), head
    raise FileNotFoundError(
        f"{path}: neither a phase artifact (artifact.json) nor an HF checkpoint (config.json)"
    )


def _mesh():
    from rlhf_jax import sharding

    return sharding.make_mesh(sharding.MeshConfig())


def _batch(requested: int, rows: int, mesh) -> int:
    """Rows per call: at most ``requested`` (and no more than the rows there are), a multiple
    of the devices the batch is split over."""
    devices = mesh.devices.size
    size = max(1, min(requested, rows))
    return -(-size // devices) * devices


def export(argv: list[str]) -> int:
    """Writes an artifact as an HF checkpoint (``*ForCausalLM``, or a reward model as
    ``*ForSequenceClassification``) with its tokenizer, loadable by `transformers`; a LoRA
    run's with its adapters merged in (and, with --peft, the adapters alone for `peft`)."""
    p = _Parser(prog="rlhf-jax export", description=export.__doc__)
    p.add_argument("model", help="a phase artifact (or an HF checkpoint) directory")
    p.add_argument("out", help="the HF checkpoint directory to write")
    p.add_argument("--dtype", default=None, help="stored dtype (default: the parameters')")
    p.add_argument("--tokenizer", default=None, help="tokenizer directory (default: the model's)")
    p.add_argument("--shard-mb", type=int, default=None, help="split into shards of this size")
    p.add_argument("--peft", default=None, help="a LoRA run's adapters as a peft adapter here")
    args = p.parse_args(argv)
    from rlhf_jax import models
    from rlhf_jax.models import lora_export
    from rlhf_jax.placement import place_adapters, place_model

    if args.peft is not None:
        adapted, config, base = place_adapters(args.model, mesh=_mesh())
        lora_export.save_peft_adapter(
            adapted.merged(), args.peft, config=config, base_model=base.get("hf_path")
        )
        print(f"[export] LoRA adapters of {args.model} → {args.peft} (peft loads them)")
    source, head = _source(args.model, tokenizer=args.tokenizer)
    tokenizer = models.load_tokenizer(source.tokenizer_path)
    placed = place_model(source, head=head, mesh=_mesh())
    shard = None if args.shard_mb is None else args.shard_mb * 1_000_000
    models.save_pretrained(
        placed.merged(), args.out, tokenizer=tokenizer, dtype=args.dtype, max_shard_bytes=shard
    )
    print(f"[export] {head} model from {args.model} → {args.out} (transformers loads it)")
    return 0


def generate(argv: list[str]) -> int:
    """Samples responses from a policy for prompts (strings, rendered with the tokenizer's chat
    template when it has one), printed or written as JSON Lines."""
    p = _Parser(prog="rlhf-jax generate", description=generate.__doc__)
    p.add_argument("model", help="a policy artifact or HF checkpoint directory")
    p.add_argument("--prompt", action="append", default=[], help="a prompt (repeatable)")
    p.add_argument("--prompts", default=None, help="a data file with a prompt column")
    p.add_argument("--column", default="prompt", help="the prompt column of --prompts")
    p.add_argument("--limit", type=int, default=0, help="the first N prompts of --prompts")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=1.0, help="0: greedy")
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--samples", type=int, default=1, help="responses per prompt")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--tokenizer", default=None)
    p.add_argument("--out", default=None, help="JSON Lines output (default: print)")
    args = p.parse_args(argv)
    prompts = list(args.prompt)
    if args.prompts:
        from rlhf_jax.data import load_prompts

        prompts += load_prompts(args.prompts, column=args.column)[: args.limit or None]
    if not prompts:
        raise UsageError("rlhf-jax generate: give --prompt TEXT or --prompts FILE")
    import jax
    import numpy as np

    from rlhf_jax import models
    from rlhf_jax.generation import SamplingConfig
    from rlhf_jax.inference import Sampler
    from rlhf_jax.placement import check_tokenizer, place_model

    source, head = _source(args.model, tokenizer=args.tokenizer)
    if head != "lm":
        raise ValueError(f"{args.model} holds a {head} model; generate needs a policy (an LM)")
    tokenizer = models.load_tokenizer(source.tokenizer_path)
    mesh = _mesh()
    policy = place_model(source, head="lm", mesh=mesh)
    check_tokenizer(tokenizer, policy.config, where=args.model, field="--tokenizer")
    tokens, mask = models.encode_prompts(tokenizer, prompts, max_length=None)
    eos_ids = tuple(policy.config.eos_token_ids) or (tokenizer.eos_token_id,)
    config = SamplingConfig(
        max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
        top_p=args.top_p, eos_ids=eos_ids, pad_id=int(tokenizer.pad_token_id),
    )  # fmt: skip
    n = args.samples
    sampler = Sampler(policy, config, batch_size=_batch(args.batch_size, len(prompts) * n, mesh))
    r, rm = sampler(np.repeat(tokens, n, 0), np.repeat(mask, n, 0), jax.random.key(args.seed))
    texts, ended = models.decode_responses(tokenizer, r, rm, eos_ids)
    rows = [
        {"prompt": prompts[i // n], "response": t, "ended": bool(e)}
        for i, (t, e) in enumerate(zip(texts, ended, strict=True))
    ]

    def show(row):
        cut = "" if row["ended"] else f"  [no EOS within {args.max_new_tokens} tokens]"
        return f"> {row['prompt']}\n{row['response'] or '(empty)'}{cut}\n"

    _emit(rows, args.out, show)
    return 0


def _emit(rows, out, show) -> None:
    if out is None:
        for row in rows:
            print(show(row))
        return
    path = pathlib.Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    print(f"{len(rows)} rows → {path}", file=sys.stderr)


def score(argv: list[str]) -> int:
    """Scores every response of a data file (SFT rows, preference pairs or rankings) with a
    reward model; for pairs, also the share where chosen outscores rejected."""
    p = _Parser(prog="rlhf-jax score", description=score.__doc__)
    p.add_argument("model", help="a reward-model artifact or HF *ForSequenceClassification dir")
    p.add_argument("--data", required=True, help="a data file in any supported format")
    p.add_argument("--max-length", type=int, default=1024, help="longer rows are counted, left out")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--tokenizer", default=None)
    p.add_argument("--out", default=None, help="JSON Lines of per-row scores (default: print)")
    args = p.parse_args(argv)
    import numpy as np

    from rlhf_jax import data as data_lib
    from rlhf_jax import models, placement
    from rlhf_jax.inference import Scorer
    from rlhf_jax.policy_eval import pooling_of

    source, head = _source(args.model, tokenizer=args.tokenizer)
    if head != "reward":
        raise ValueError(f"{args.model} holds a {head} model; score needs a reward model")
    tokenizer = models.load_tokenizer(source.tokenizer_path)
    mesh = _mesh()
    model = placement.place_model(source, head="reward", mesh=mesh)
    placement.check_tokenizer(tokenizer, model.config, where=args.model, field="--tokenizer")
    dataset = data_lib.load_data(
        data_lib.DataConfig(path=args.data, bucket_lengths=(args.max_length,)), tokenizer
    )
    print(f"data {dataset.report.summary()}", file=sys.stderr)
    if not dataset.examples:
        raise ValueError(f"{args.data}: no usable rows to score")
    prompts = [e.prompt_ids for e in dataset.examples for _ in e.response_ids]
    responses = [r for e in dataset.examples for r in e.response_ids]
    p_tok, p_mask = models.pad_rows(prompts, tokenizer.pad_token_id, left=True)
    r_tok, r_mask = models.pad_rows(responses, tokenizer.pad_token_id, left=False)
    batch = _batch(args.batch_size, len(responses), mesh)
    scorer = Scorer(model, batch_size=batch, pooling=pooling_of(source))
    scores = scorer.reward(p_tok, p_mask, r_tok, r_mask)
    rows, at = [], 0
    for e in dataset.examples:
        k = len(e.response_ids)
        rows.append({"row": e.row, "scores": [round(float(s), 6) for s in scores[at : at + k]]})
        at += k
    _emit(rows, args.out, lambda row: f"row {row['row']}: {row['scores']}")
    if dataset.kind == "preference":
        pairs = np.asarray([row["scores"] for row in rows])
        accuracy = float(np.mean(pairs[:, 0] > pairs[:, 1]))
        print(f"[score] chosen > rejected on {accuracy:.3f} of {len(rows)} pairs", file=sys.stderr)
    return 0


def report(argv: list[str]) -> int:
    """Training curves of any run directories (every phase's logs; RL's reward, KL, length
    and monitor plots) in one markdown report with PNGs."""
    p = _Parser(prog="rlhf-jax report", description=report.__doc__)
    p.add_argument("runs", nargs="+", help="run directories (each with logs/metrics.jsonl)")
    p.add_argument("--out", default=None, help="where report.md goes (default: RUN/report)")
    args = p.parse_args(argv)
    from rlhf_jax.evaluation.runs import write_run_report

    out = args.out or str(pathlib.Path(args.runs[0]) / "report")
    path = write_run_report(args.runs, out)
    print(f"[report] {path}")
    return 0
