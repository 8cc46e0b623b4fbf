"""Bucketing, collation and the seeded resumable multi-host iterator (rlhf_jax.data)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from rlhf_jax import data
from rlhf_jax.data.report import DataReport

PAD_ID = 0


def make_dataset(prompt_lens, response_lens, *, bucket_lengths=(8, 16, 32), kind="sft"):
    """Examples with distinct ids (prompt 100+, response 200+), bucketed as the loader does."""
    examples = []
    for i, (p, r) in enumerate(zip(prompt_lens, response_lens, strict=True)):
        fit = data.fit_to_bucket(p, [r], bucket_lengths, too_long="drop")
        assert fit.length is not None
        prompt = np.arange(100, 100 + p, dtype=np.int32)
        response = np.arange(200, 200 + r, dtype=np.int32)
        examples.append(
            data.Example(i, prompt, (response,) * (2 if kind == "preference" else 1), fit.length)
        )
    k = 2 if kind == "preference" else 1
    return data.TokenizedDataset(
        kind, tuple(examples), tuple(bucket_lengths), PAD_ID, k, DataReport("mem")
    )


def random_dataset(n, seed=0, kind="sft"):
    rng = np.random.default_rng(seed)
    return make_dataset(rng.integers(1, 12, n), rng.integers(1, 12, n), kind=kind)


def take(it, n):
    return [next(it) for _ in range(n)]


def assert_batches_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for key in x:
            np.testing.assert_array_equal(x[key], y[key], err_msg=key)


def test_same_seed_same_batches_and_other_seed_differs():
    ds = random_dataset(37)
    run = lambda seed: take(
        data.BatchIterator(ds, batch_size=4, seed=seed, process_count=1, process_index=0), 25
    )
    assert_batches_equal(run(3), run(3))
    ids = lambda batches: [b["example_id_B"].tolist() for b in batches]
    assert ids(run(3)) != ids(run(4))


def test_every_example_once_per_epoch_in_static_shapes():
    ds = random_dataset(37)
    it = data.BatchIterator(ds, batch_size=4, seed=0, process_index=0, process_count=1)
    for epoch in range(2):
        seen = []
        for batch in take(it, it.steps_per_epoch):
            (length,) = {batch["tokens_BxT"].shape[1]}
            assert batch["tokens_BxT"].shape == (4, length) and length in ds.bucket_lengths
            real = batch["example_id_B"][batch["example_mask_B"]]
            assert all(ds.examples[i].length == length for i in real)
            # Filler rows carry no token: every mask is off.
            filler = ~batch["example_mask_B"]
            assert (
                not batch["attn_mask_BxT"][filler].any()
                and not batch["loss_mask_BxT"][filler].any()
            )
            seen.extend(real.tolist())
        assert sorted(seen) == list(range(len(ds))), epoch
        assert it.state()["epoch"] == epoch + 1 and it.state()["step"] == 0
    # Shuffled anew each epoch.
    first = [
        b["example_id_B"].tolist()
        for b in take(data.BatchIterator(ds, batch_size=4, process_count=1), it.steps_per_epoch)
    ]
    second = [b["example_id_B"].tolist() for b in take(it, it.steps_per_epoch)]
    assert first != second


@pytest.mark.parametrize("stop", [0, 5, 9, 10, 23])
def test_resume_from_state_gives_the_remaining_batches(stop):
    ds = random_dataset(37)
    make = lambda: data.BatchIterator(ds, batch_size=4, seed=7, process_index=0, process_count=1)
    assert make().steps_per_epoch == 10  # 37 examples in 3 buckets of batches of 4
    full = take(make(), 30)
    first = make()
    take(first, stop)
    state = json.loads(json.dumps(first.state()))  # what a checkpoint stores: plain ints
    assert set(state) == {"epoch", "step", "seed", "batch_size", "num_examples"}
    resumed = make()
    resumed.restore(state)
    assert_batches_equal(take(resumed, 30 - stop), full[stop:])


def test_restore_rejects_other_settings():
    ds = random_dataset(20)
    it = data.BatchIterator(ds, batch_size=4, seed=1, process_count=1)
    with pytest.raises(ValueError, match="seed=2, but this iterator has 1"):
        it.restore({**it.state(), "seed": 2})
    with pytest.raises(ValueError, match="num_examples=21"):
        it.restore({**it.state(), "num_examples": 21})
    with pytest.raises(ValueError, match="outside an epoch"):
        it.restore({**it.state(), "step": it.steps_per_epoch})


def test_hosts_together_yield_the_global_batch():
    ds = random_dataset(29, kind="preference")
    make = lambda i, n: data.BatchIterator(
        ds, batch_size=6, seed=5, process_index=i, process_count=n
    )
    whole = take(make(0, 1), 12)
    hosts = [take(make(i, 2), 12) for i in range(2)]
    for g, h0, h1 in zip(whole, *hosts, strict=True):
        assert h0["chosen_tokens_BxT"].shape[0] == 3
        for key in g:
            np.testing.assert_array_equal(np.concatenate([h0[key], h1[key]]), g[key], err_msg=key)


def test_batch_size_must_divide_over_hosts():
    with pytest.raises(
        ValueError, match="batch_size=5 must be a positive multiple of the process count 2"
    ):
        data.BatchIterator(random_dataset(8), batch_size=5, process_index=0, process_count=2)


def test_empty_dataset_raises_with_the_report():
    empty = make_dataset([], [])
    with pytest.raises(ValueError, match="mem: no usable examples"):
        data.BatchIterator(empty, batch_size=2, process_count=1)


@pytest.mark.parametrize("window", [False, True])
def test_a_jitted_step_traces_once_per_bucket_and_window(window):
    ds = random_dataset(40)
    traces = []

    @jax.jit
    def step(batch):
        traces.append((batch["tokens_BxT"].shape, batch.get("window_BxW", jnp.zeros(0)).shape))
        return jnp.sum(jnp.where(batch["loss_mask_BxT"][:, 1:], batch["tokens_BxT"][:, 1:], 0))

    it = data.BatchIterator(ds, batch_size=4, process_count=1, num_epochs=2, response_window=window)
    expected = set()
    for batch in it:
        step(batch)
        t = batch["tokens_BxT"].shape[1]
        w = data.response_window(ds, batch["example_id_B"], length=t) if window else None
        expected.add(((4, t), (0,) if w is None else (4, w)))
    assert sorted(traces) == sorted(expected)
    assert {shape for shape, _ in traces} == {(4, e.length) for e in ds.examples}
    # Windows are bucket lengths shorter than the batch's: at most one trace per pair.
    assert all(w == (0,) or (w[1] in ds.bucket_lengths and w[1] < t) for (_, t), w in traces)


@given(
    n=st.integers(1, 30),
    local_batch=st.integers(1, 4),
    hosts=st.sampled_from([1, 2, 3]),
    seed=st.integers(0, 2**31),
    shuffle=st.booleans(),
)
def test_hosts_cover_each_epoch_exactly_once(n, local_batch, hosts, seed, shuffle):
    ds = random_dataset(n, seed=seed % 97)
    batch_size = local_batch * hosts
    its = [
        data.BatchIterator(
            ds,
            batch_size=batch_size,
            seed=seed,
            shuffle=shuffle,
            process_index=i,
            process_count=hosts,
            num_epochs=1,
        )
        for i in range(hosts)
    ]
    seen = []
    for per_host in zip(*its, strict=True):
        assert {b["tokens_BxT"].shape for b in per_host} == {
            (local_batch, per_host[0]["tokens_BxT"].shape[1])
        }
        for b in per_host:
            seen.extend(b["example_id_B"][b["example_mask_B"]].tolist())
    assert sorted(seen) == list(range(n))
    # Filler rows only ever complete a bucket's last batch.
    assert its[0].steps_per_epoch == sum(
        -(-int(np.sum(ds.lengths() == t)) // batch_size) for t in ds.bucket_lengths
    )


@given(
    prompt_len=st.integers(0, 20),
    response_lens=st.lists(st.integers(1, 20), min_size=1, max_size=3),
    buckets=st.lists(st.integers(2, 40), min_size=1, max_size=4, unique=True).map(sorted),
    policy=st.sampled_from(["drop", "truncate"]),
)
def test_fit_to_bucket(prompt_len, response_lens, buckets, policy):
    fit = data.fit_to_bucket(prompt_len, response_lens, buckets, too_long=policy)
    total = prompt_len + max(response_lens)
    if total <= buckets[-1]:
        assert fit.length == min(t for t in buckets if t >= total) and fit.prompt_keep == prompt_len
        assert not fit.truncated
    elif policy == "truncate" and max(response_lens) < buckets[-1]:
        assert fit.truncated and fit.length == buckets[-1]
        assert fit.prompt_keep + max(response_lens) == buckets[-1] and fit.prompt_keep >= 1
    else:
        assert fit.length is None and fit.detail


@given(
    prompt=st.integers(0, 12),
    keep=st.integers(1, 12),
    bos=st.booleans(),
)
def test_truncate_prompt_keeps_bos_and_the_end(prompt, keep, bos):
    ids = np.arange(1 if bos else 5, 1 + prompt if bos else 5 + prompt, dtype=np.int32)
    out = data.truncate_prompt(ids, keep, bos_id=1)
    assert len(out) == min(keep, prompt)
    if keep < prompt:
        assert out[-1] == ids[-1]
        if bos and keep >= 2:
            assert out[0] == 1 and out[1:].tolist() == ids[prompt - keep + 1 :].tolist()


@given(
    lens=st.lists(st.tuples(st.integers(1, 10), st.integers(1, 10)), min_size=1, max_size=6),
    kind=st.sampled_from(["sft", "preference"]),
)
def test_collate_masks_match_lengths(lens, kind):
    ds = make_dataset([p for p, _ in lens], [r for _, r in lens], kind=kind)
    length = 32
    batch = data.collate(ds, [*range(len(lens)), -1], length=length)
    prefix = "chosen_" if kind == "preference" else ""
    tokens, loss, attn, pos = (
        batch[f"{prefix}{k}_BxT"] for k in ("tokens", "loss_mask", "attn_mask", "positions")
    )
    for b, (p, r) in enumerate([*lens, (0, 0)]):
        assert loss[b].sum() == r and attn[b].sum() == p + r
        # Right padding: real tokens first, then only pad ids.
        assert attn[b, : p + r].all() and (tokens[b, p + r :] == PAD_ID).all()
        assert tokens[b][loss[b]].tolist() == list(range(200, 200 + r))
        assert pos[b].tolist() == np.maximum(np.cumsum(attn[b]) - 1, 0).tolist()
    assert batch["example_mask_B"].tolist() == [True] * len(lens) + [False]
