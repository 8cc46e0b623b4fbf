"""PPO's prompts: the prompt set, encoded to one length, and a seeded, resumable sampler.

Prompts longer than ``prompt_length`` tokens are left out and counted (never cut); a set with
none that fit is an error naming the file.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from rlhf_jax import checkpoint as ckpt_lib
from rlhf_jax import data as data_lib
from rlhf_jax import models


@dataclasses.dataclass(frozen=True)
class EncodedPrompts:
    rows: data_lib.PromptSet  # the file's prompts and other columns
    tokens_NxP: np.ndarray  # the prompts that fit, left-padded to P
    mask_NxP: np.ndarray
    kept_N: np.ndarray  # their rows in the file

    @property
    def num_dropped(self) -> int:
        return len(self.rows.prompts) - len(self.kept_N)

    def summary(self, path: str, max_length: int) -> str:
        return (
            f"prompts {path}: {len(self.rows.prompts)} rows, {len(self.kept_N)} used, "
            f"{self.num_dropped} longer than prompt_length={max_length} left out"
        )


def encode_prompt_file(
    tokenizer, path: str, *, split: str, max_length: int, column: str = "prompt"
) -> EncodedPrompts:
    rows = data_lib.load_prompt_rows(path, split=split, column=column)
    tokens, mask, kept = models.fit_prompts(tokenizer, rows.prompts, max_length=max_length)
    if not len(kept):
        raise ValueError(
            f"{path}: none of its {len(rows.prompts)} prompts fits in prompt_length={max_length} "
            "tokens; raise prompt_length"
        )
    return EncodedPrompts(rows, tokens, mask, kept)


class PromptSampler:
    """Seeded, resumable prompt batches: an endless stream of per-epoch permutations.

    Batch i is positions [i·B, (i+1)·B) of perm(seed, 0) ‖ perm(seed, 1) ‖ …; the state is one
    integer. Each host takes its contiguous slice of every global batch.
    """

    def __init__(self, tokens_NxP, mask_NxP, *, batch_size: int, seed: int, repeat: int = 1):
        if batch_size % jax.process_count():
            raise ValueError(
                f"prompts_per_iteration={batch_size} must divide by the {jax.process_count()} "
                "processes"
            )
        self.tokens, self.mask = tokens_NxP, mask_NxP
        self.batch_size, self.seed, self.repeat = batch_size, seed, repeat
        self.position = 0

    def _indices(self, start: int, count: int) -> np.ndarray:
        n = len(self.tokens)
        out = []
        while count > 0:
            epoch, offset = divmod(start, n)
            perm = np.random.default_rng([self.seed, epoch]).permutation(n)
            take = perm[offset : offset + count]
            out.append(take)
            start += len(take)
            count -= len(take)
        return np.concatenate(out)

    def next(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """This host's (tokens, mask, indices into the prompt arrays) of the next batch."""
        idx = self._indices(self.position, self.batch_size)
        self.position += self.batch_size
        per_host = self.batch_size // jax.process_count()
        idx = idx[jax.process_index() * per_host : (jax.process_index() + 1) * per_host]
        # K samples per prompt sit next to each other (group baselines reshape to (B/K, K)).
        idx = np.repeat(idx, self.repeat)
        return self.tokens[idx], self.mask[idx], idx

    def state(self) -> dict:
        return {"position": self.position, "seed": self.seed, "num_prompts": len(self.tokens)}

    def restore(self, state: dict) -> None:
        if state["seed"] != self.seed or state["num_prompts"] != len(self.tokens):
            raise ckpt_lib.CheckpointError(
                f"prompt position saved for seed {state['seed']} over {state['num_prompts']} "
                f"prompts; now seed {self.seed} over {len(self.tokens)}"
            )
        self.position = int(state["position"])
