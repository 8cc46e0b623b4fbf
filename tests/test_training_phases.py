"""Phases end to end on tiny data: learning, artifacts, kill-and-resume, bad input."""

import dataclasses
import functools

import jax
import numpy as np
import pytest
from data_testing import VOCAB, make_tokenizer, write_jsonl
from flax import nnx
from training_testing import TINY

from rlhf_jax import checkpoint as ckpt_lib
from rlhf_jax import data as data_lib
from rlhf_jax import placement, sharding
from rlhf_jax.placement import ModelSource
from rlhf_jax.training import dpo, reward, sft
from rlhf_jax.training.optimizer import OptimizerConfig
from rlhf_jax.training.phase import run_phase

PHASES = {"sft": sft.PHASE, "reward": reward.PHASE, "dpo": dpo.PHASE}

WORDS = ["one", "two", "three", "four", "five", "six", "seven", "eight"]
MODEL = TINY
assert len(VOCAB) <= MODEL.vocab_size


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("phases")
    make_tokenizer(root / "tokenizer", chat=False)
    rng = np.random.default_rng(0)
    sft_rows, pref_rows = [], []
    for _ in range(64):
        a, b = rng.choice(len(WORDS) - 1, 2)
        # Completion: the next word after each prompt word — learnable, deterministic.
        sft_rows.append(
            {"prompt": f"{WORDS[a]} {WORDS[b]}", "completion": f"{WORDS[a + 1]} {WORDS[b + 1]}"}
        )
        # Separable preferences: "good" answers beat "bad" ones whatever the prompt.
        filler = " ".join(rng.choice(WORDS, 2))
        pref_rows.append(
            {
                "prompt": f"{WORDS[a]} {WORDS[b]}",
                "chosen": f"good {filler}",
                "rejected": f"bad {filler}",
            }
        )
    write_jsonl(root / "sft.jsonl", sft_rows)
    write_jsonl(root / "prefs.jsonl", pref_rows)
    return root


def _config(workdir, name, kind, *, steps, model=None, data="sft.jsonl", **overrides):
    source = model or ModelSource(init=MODEL, tokenizer=str(workdir / "tokenizer"))
    return PHASES[kind].config_type(
        run_dir=str(workdir / name),
        model=source,
        data=data_lib.DataConfig(
            path=str(workdir / data),
            bucket_lengths=(8, 12),
            batch_size=8,
            eval_fraction=0.25 if kind != "sft" else 0.0,
        ),
        optimizer=OptimizerConfig(learning_rate=3e-3, schedule="constant", warmup_steps=0),
        mesh=sharding.MeshConfig(data=1, fsdp=1, tensor=1, num_devices=1),
        checkpoint=ckpt_lib.CheckpointConfig(save_every=2, keep=2, async_save=True),
        total_steps=steps,
        log_every=2,
        console=False,
        tensorboard=False,
        **overrides,
    )


def _metrics(workdir, name):
    import json

    lines = (workdir / name / "logs" / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


@pytest.fixture(scope="module")
def sft_run(workdir):
    result = run_phase(PHASES["sft"], _config(workdir, "sft", "sft", steps=30))
    return result


def test_sft_loss_falls_and_writes_an_artifact(workdir, sft_run):
    assert sft_run["status"] == "finished" and sft_run["step"] == 30
    losses = [m["loss"] for m in _metrics(workdir, "sft") if "loss" in m]
    assert losses[-1] < 0.6 * losses[0], losses
    assert ckpt_lib.artifact_exists(workdir / "sft" / "artifact")
    meta = ckpt_lib.read_artifact_meta(workdir / "sft" / "artifact")
    assert meta["phase"] == "sft" and meta["model"]["hidden_size"] == 32


def test_reward_model_from_sft_artifact_learns_separable_preferences(workdir, sft_run):
    source = ModelSource(
        artifact=str(workdir / "sft" / "artifact"), tokenizer=str(workdir / "tokenizer")
    )
    result = run_phase(
        PHASES["reward"],
        _config(workdir, "rm", "reward", steps=25, model=source, data="prefs.jsonl"),
    )
    assert result["eval"]["accuracy"] > 0.9, result["eval"]
    # The trunk started from the SFT policy, not from scratch.
    assert ckpt_lib.read_artifact_meta(workdir / "rm" / "artifact")["head"] == "reward"


@pytest.mark.parametrize("precompute", [True, False])
def test_dpo_from_sft_artifact_raises_implicit_reward_accuracy(workdir, sft_run, precompute):
    source = ModelSource(
        artifact=str(workdir / "sft" / "artifact"), tokenizer=str(workdir / "tokenizer")
    )
    config = _config(
        workdir,
        f"dpo_{precompute}",
        "dpo",
        steps=20,
        model=source,
        data="prefs.jsonl",
        dpo=dpo.DPOLossConfig(beta=0.1, precompute_reference=precompute),
    )
    result = run_phase(PHASES["dpo"], config)
    first = next(m for m in _metrics(workdir, f"dpo_{precompute}") if "loss" in m)
    np.testing.assert_allclose(first["loss"], np.log(2.0), rtol=0.05)
    assert result["eval"]["rewards/accuracies"] > 0.9, result["eval"]
    assert result["eval"]["rewards/margins"] > 0


def test_kill_and_resume_reproduces_the_uninterrupted_run(workdir):
    full = run_phase(PHASES["sft"], _config(workdir, "full", "sft", steps=6))
    cut = _config(workdir, "cut", "sft", steps=6)
    first = run_phase(PHASES["sft"], cut, stop_after=3)
    assert first["status"] == "interrupted" and first["step"] == 3
    assert not ckpt_lib.artifact_exists(workdir / "cut" / "artifact")
    second = run_phase(PHASES["sft"], cut)
    assert second["status"] == "finished" and second["step"] == 6
    for a, b in zip(
        jax.tree.leaves(full["state"].params), jax.tree.leaves(second["state"].params), strict=True
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # The data position is part of the checkpoint: both runs end at the same place.
    saved = ckpt_lib.PhaseCheckpointer(
        workdir / "cut" / "checkpoints", fingerprint={}, config=ckpt_lib.CheckpointConfig()
    )
    full_ckpt = ckpt_lib.PhaseCheckpointer(
        workdir / "full" / "checkpoints", fingerprint={}, config=ckpt_lib.CheckpointConfig()
    )
    assert saved.latest_step() == full_ckpt.latest_step() == 6


def test_resume_with_another_config_names_the_fields(workdir):
    run_phase(PHASES["sft"], _config(workdir, "mismatch", "sft", steps=2))
    other = dataclasses.replace(MODEL, hidden_size=48, num_heads=6, head_dim=8)
    config = _config(
        workdir,
        "mismatch",
        "sft",
        steps=4,
        model=ModelSource(init=other, tokenizer=str(workdir / "tokenizer")),
    )
    with pytest.raises(ckpt_lib.CheckpointError, match=r"model\.hidden_size"):
        run_phase(PHASES["sft"], config)


def test_wrong_data_for_the_phase_is_a_clear_error(workdir):
    config = _config(workdir, "wrong", "reward", steps=2, data="sft.jsonl")
    with pytest.raises(ValueError, match="needs preference or ranking data"):
        run_phase(PHASES["reward"], config)


def test_model_source_needs_one_origin(workdir):
    with pytest.raises(ValueError, match="set hf_path, artifact, or init"):
        ModelSource(tokenizer="t")
    with pytest.raises(ValueError, match="not both"):
        ModelSource(hf_path="h", artifact="a", tokenizer="t")
    # Loaded weights win over a preset's random-init architecture (which stays as given).
    assert ModelSource(init=MODEL, artifact="a", tokenizer="t").origin == "artifact"
    assert ModelSource(init=MODEL, hf_path="h").origin == "hf"
    assert ModelSource(init=MODEL).origin == "init"
    with pytest.raises(ValueError, match=r"model\.tokenizer is required"):
        _ = ModelSource(init=MODEL).tokenizer_path


def test_a_reward_artifact_given_to_an_lm_phase_is_refused_by_name(workdir, sft_run):
    source = ModelSource(
        artifact=str(workdir / "sft" / "artifact"), tokenizer=str(workdir / "tokenizer")
    )
    rm = run_phase(
        PHASES["reward"],
        _config(workdir, "rm_for_dpo", "reward", steps=2, model=source, data="prefs.jsonl"),
    )
    assert rm["status"] == "finished"
    wrong = ModelSource(
        artifact=str(workdir / "rm_for_dpo" / "artifact"), tokenizer=str(workdir / "tokenizer")
    )
    config = _config(workdir, "dpo_wrong", "dpo", steps=2, model=wrong, data="prefs.jsonl")
    with pytest.raises(ckpt_lib.CheckpointError, match=r"rm_for_dpo/artifact holds a reward"):
        run_phase(PHASES["dpo"], config)


def test_a_phase_refuses_another_phase_config(workdir):
    with pytest.raises(TypeError, match="DPOPhaseConfig"):
        run_phase(PHASES["dpo"], _config(workdir, "x", "sft", steps=2))


def test_missing_artifact_is_a_clear_error(workdir):
    source = ModelSource(artifact=str(workdir / "nowhere"), tokenizer=str(workdir / "tokenizer"))
    with pytest.raises(ckpt_lib.CheckpointError, match="no phase artifact"):
        run_phase(PHASES["sft"], _config(workdir, "x", "sft", steps=2, model=source))


del functools


# --- LoRA: every offline phase on adapters over a frozen base ----------------------------------

LORA = {"rank": 4, "alpha": 8.0, "targets": ("q", "k", "v", "o", "gate", "up", "down")}


def _leaf_kinds(state):
    return {type(v).__name__ for _, v in nnx.to_flat_state(state)}


def test_lora_sft_trains_adapters_only_checkpoints_them_and_resumes_exactly(workdir, sft_run):
    tok = str(workdir / "tokenizer")
    base = ModelSource(artifact=str(workdir / "sft" / "artifact"), tokenizer=tok)
    source = dataclasses.replace(base, lora={**LORA, "dropout": 0.1})
    full = run_phase(PHASES["sft"], _config(workdir, "lora_full", "sft", steps=6, model=source))
    cut = _config(workdir, "lora_cut", "sft", steps=6, model=source)
    assert run_phase(PHASES["sft"], cut, stop_after=3)["status"] == "interrupted"
    second = run_phase(PHASES["sft"], cut)
    for a, b in zip(
        jax.tree.leaves(full["state"].params), jax.tree.leaves(second["state"].params), strict=True
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    state = full["state"]
    assert _leaf_kinds(state.params) == {"LoraParam"}
    # The base did not move: the frozen weights are the SFT artifact's.
    sft_params = sft_run["state"].params
    for path, var in nnx.to_flat_state(state.frozen["rest"]):
        if type(var).__name__ == "Param":
            want = dict(nnx.to_flat_state(sft_params))[path].get_value()
            np.testing.assert_array_equal(np.asarray(var.get_value()), np.asarray(want))
    # Checkpoints and the artifact hold adapters (and optimizer state), never the base.
    saved = ckpt_lib.saved_state_tree(workdir / "lora_full" / "checkpoints" / "6")
    assert saved["frozen"] is None
    names = {k for k, _ in jax.tree_util.tree_flatten_with_path(saved["params"])[0]}
    assert names and all("lora_" in jax.tree_util.keystr(k) for k in names)
    tree = ckpt_lib.artifact_tree(workdir / "lora_full" / "artifact")
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    assert leaves and all("lora_" in jax.tree_util.keystr(k) for k, _ in leaves)
    # Loading the artifact merges the adapters: the same logits as the adapted model.
    mesh = sharding.make_mesh(sharding.MeshConfig(num_devices=1))
    merged = placement.place_model(
        ModelSource(artifact=str(workdir / "lora_full" / "artifact"), tokenizer=tok),
        head="lm", mesh=mesh,
    )  # fmt: skip
    adapted = nnx.merge(placement_graphdef(source, mesh), state.params, state.frozen["rest"])
    tokens = np.arange(1, 13, dtype=np.int32).reshape(2, 6) % MODEL.vocab_size
    kw = dict(positions_BxT=np.tile(np.arange(6), (2, 1)), attn_mask_BxT=np.ones((2, 6), bool))
    np.testing.assert_allclose(
        np.asarray(merged.merged()(tokens, **kw)), np.asarray(adapted(tokens, **kw)),
        rtol=1e-5, atol=1e-5,
    )  # fmt: skip
    assert ckpt_lib.read_artifact_meta(workdir / "lora_full" / "artifact")["base"] == {
        "artifact": str((workdir / "sft" / "artifact").absolute())
    }


def placement_graphdef(source, mesh):
    return placement.place_model(source, head="lm", mesh=mesh).graphdef


def test_lora_reward_model_trains_adapters_and_head(workdir, sft_run):
    source = ModelSource(
        artifact=str(workdir / "sft" / "artifact"), tokenizer=str(workdir / "tokenizer"),
        lora=LORA,
    )  # fmt: skip
    result = run_phase(
        PHASES["reward"],
        _config(workdir, "lora_rm", "reward", steps=25, model=source, data="prefs.jsonl"),
    )
    assert result["eval"]["accuracy"] > 0.9, result["eval"]
    params = result["state"].params
    assert _leaf_kinds(params["trunk"]) == {"LoraParam"} and _leaf_kinds(params["head"]) == {
        "Param"
    }
    # A LoRA reward artifact loads (merged) as PPO's reward model would.
    mesh = sharding.make_mesh(sharding.MeshConfig(num_devices=1))
    rm = placement.place_model(str(workdir / "lora_rm" / "artifact"), head="reward", mesh=mesh)
    assert _leaf_kinds(rm.params) == {"Param"}


@pytest.mark.parametrize("precompute", [True, False])
def test_lora_dpo_on_a_lora_sft_artifact(workdir, sft_run, precompute):
    """DPO with adapters over the merged LoRA-SFT model; its reference is that model, by
    switching the adapters off (in the step) or precomputed."""
    tok = str(workdir / "tokenizer")
    lora_sft = workdir / "lora_sft_for_dpo"
    if not ckpt_lib.artifact_exists(lora_sft / "artifact"):
        sft_source = ModelSource(artifact=str(workdir / "sft" / "artifact"), tokenizer=tok,
                                 lora=LORA)  # fmt: skip
        run_phase(PHASES["sft"], _config(workdir, lora_sft.name, "sft", steps=4, model=sft_source))
    source = ModelSource(artifact=str(lora_sft / "artifact"), tokenizer=tok, lora=LORA)
    name = f"lora_dpo_{precompute}"
    config = _config(
        workdir, name, "dpo", steps=20, model=source, data="prefs.jsonl",
        dpo=dpo.DPOLossConfig(beta=0.1, precompute_reference=precompute),
    )  # fmt: skip
    result = run_phase(PHASES["dpo"], config)
    first = next(m for m in _metrics(workdir, name) if "loss" in m)
    np.testing.assert_allclose(first["loss"], np.log(2.0), rtol=0.05)
    assert result["eval"]["rewards/accuracies"] > 0.9, result["eval"]
    assert "extra" not in result["state"].frozen  # no copy of the weights for the reference


def test_a_checkpoint_that_holds_the_frozen_arrays_still_resumes(workdir, monkeypatch):
    """Checkpoints written before frozen arrays were left out of them resume exactly."""
    import orbax.checkpoint as ocp

    from rlhf_jax.logging import jsonable

    def save_everything(self, step, state, data_state, *, force=False):
        self.wait()
        return self._manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                data=ocp.args.JsonSave(jsonable(data_state)),
                meta=ocp.args.JsonSave(self.fingerprint),
            ),
            force=force,
        )

    config = _config(workdir, "old_layout", "dpo", steps=6, data="prefs.jsonl",
                     dpo=dpo.DPOLossConfig(precompute_reference=False))  # fmt: skip
    with monkeypatch.context() as m:
        m.setattr(ckpt_lib.PhaseCheckpointer, "save", save_everything)
        assert run_phase(PHASES["dpo"], config, stop_after=3)["status"] == "interrupted"
    saved = ckpt_lib.saved_state_tree(workdir / "old_layout" / "checkpoints" / "3")
    assert saved["frozen"]["extra"]  # the old layout: the reference is in the checkpoint
    resumed = run_phase(PHASES["dpo"], config)
    full = run_phase(PHASES["dpo"], dataclasses.replace(config, run_dir=str(workdir / "new")))
    for a, b in zip(
        jax.tree.leaves(full["state"].params), jax.tree.leaves(resumed["state"].params), strict=True
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
