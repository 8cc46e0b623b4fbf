"""Using a trained policy or reward model outside training: sample, score, decode.

    policy = place_model("runs/sft/artifact", head="lm", mesh=mesh)   # rlhf_jax.placement
    responses, masks = Sampler(policy, sampling)(prompts, prompt_masks, key)
    scores = Scorer(reward_model, pooling="mean").reward(prompts, masks, responses, masks)

A model placed on the mesh once serves batched, jitted calls — what preference collection and
evaluation need (rollouts during PPO live in ``training.ppo``). Nothing here trains.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rlhf_jax import models
from rlhf_jax import sharding as sharding_lib
from rlhf_jax.generation import SamplingConfig, sample
from rlhf_jax.models.tokenizer import decode_responses
from rlhf_jax.placement import PlacedModel

__all__ = ["Sampler", "Scorer", "decode_responses"]


def _pad_rows(x: np.ndarray, multiple: int) -> tuple[np.ndarray, int]:
    """Pads the batch axis to a multiple (so it splits over the mesh); returns the real count."""
    n = len(x)
    extra = (-n) % multiple
    if extra:
        x = np.concatenate([x, np.repeat(x[-1:], extra, axis=0)])
    return x, n


class Sampler:
    """Batched sampling from a policy with a fixed SamplingConfig (one trace per batch shape)."""

    def __init__(self, policy: PlacedModel, config: SamplingConfig, *, batch_size: int = 64):
        self.policy, self.config, self.batch_size = policy, config, batch_size
        model = policy.merged()
        self._graphdef, self._full = nnx.split(model)
        self._fn = jax.jit(
            lambda full, p, m, k: sample(self._graphdef, full, p, m, k, config=config)
        )

    def __call__(self, prompt_NxP, mask_NxP, key) -> tuple[np.ndarray, np.ndarray]:
        """(response tokens (N, R), response mask (N, R)) as NumPy arrays."""
        tokens, masks = [], []
        for start in range(0, len(prompt_NxP), self.batch_size):
            p, n = _pad_rows(prompt_NxP[start : start + self.batch_size], self.batch_size)
            m, _ = _pad_rows(mask_NxP[start : start + self.batch_size], self.batch_size)
            batch = sharding_lib.shard_batch({"p": p, "m": m}, self.policy.mesh)
            gen = self._fn(self._full, batch["p"], batch["m"], jax.random.fold_in(key, start))
            tokens.append(np.asarray(jax.device_get(gen.tokens_BxN))[:n])
            masks.append(np.asarray(jax.device_get(gen.mask_BxN))[:n])
        return np.concatenate(tokens), np.concatenate(masks)


class Scorer:
    """Reward-model scores and policy log-probs of (prompt, response) token batches."""

    def __init__(
        self,
        model: PlacedModel,
        *,
        batch_size: int = 64,
        temperature: float = 1.0,
        pooling: str = "last",
    ):
        self.model, self.batch_size = model, batch_size

        def seq(p, pm, r, rm):
            tokens = jnp.concatenate([p, r], axis=1)
            attn = jnp.concatenate([pm, rm], axis=1)
            return tokens, attn, models.positions_from_mask(attn)

        def reward(params, rest, p, pm, r, rm):
            tokens, attn, pos = seq(p, pm, r, rm)
            response = jnp.concatenate([jnp.zeros_like(pm), rm], axis=1)
            return nnx.merge(model.graphdef, params, rest).score(
                tokens,
                positions_BxT=pos,
                attn_mask_BxT=attn,
                response_mask_BxT=response,
                pooling=pooling,
            )

        def logprob(params, rest, p, pm, r, rm):
            tokens, attn, pos = seq(p, pm, r, rm)
            m = nnx.merge(model.graphdef, params, rest)
            h = m.hidden_states(tokens, positions_BxT=pos, attn_mask_BxT=attn)
            stats = m.token_logprobs(
                h[:, p.shape[1] - 1 : -1], r, rm.astype(bool), temperature=temperature
            )
            return jnp.sum(stats.logp_BxN, axis=-1)

        def next_token(params, rest, p, pm, ids_O):
            m = nnx.merge(model.graphdef, params, rest)
            pos = models.positions_from_mask(pm)
            h = m.hidden_states(p, positions_BxT=pos, attn_mask_BxT=pm)
            logits = m.logits(h[:, -1:])[:, 0].astype(jnp.float32) / temperature
            return jax.nn.log_softmax(logits, axis=-1)[:, ids_O]

        self._reward, self._logprob = jax.jit(reward), jax.jit(logprob)
        self._next_token = jax.jit(next_token)

    def _run(self, fn, *arrays, extra=()) -> np.ndarray:
        out = []
        for start in range(0, len(arrays[0]), self.batch_size):
            sl = slice(start, start + self.batch_size)
            padded = [_pad_rows(x[sl], self.batch_size)[0] for x in arrays]
            n = len(arrays[0][sl])
            batch = sharding_lib.shard_batch(dict(enumerate(padded)), self.model.mesh)
            values = fn(self.model.params, self.model.rest, *batch.values(), *extra)
            out.append(np.asarray(jax.device_get(values))[:n])
        return np.concatenate(out)

    def reward(self, p, pm, r, rm) -> np.ndarray:
        return self._run(self._reward, p, pm, r, rm)

    def logprob(self, p, pm, r, rm) -> np.ndarray:
        return self._run(self._logprob, p, pm, r, rm)

    def next_token_logprobs(self, p, pm, token_ids) -> np.ndarray:
        """log π(token | prompt) (N, len(token_ids)) of the next token after each left-padded
        prompt, one forward for all the tokens asked about."""
        ids = jnp.asarray(np.asarray(token_ids, np.int32))
        return self._run(self._next_token, p, pm, extra=(ids,))
