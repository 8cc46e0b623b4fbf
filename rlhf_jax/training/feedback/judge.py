"""A feedback model: any causal LM that reads principles as text and answers or writes.

    judge = FeedbackModel(place_model(path, head="lm", mesh=mesh), tokenizer)
    rows, info = ai_feedback(judge, constitution, prompts, a, b, FeedbackConfig(), seed=0)

`FeedbackModel` scores option strings after a prompt (the next-token probabilities of "A" and
"B", or each option's sequence log-prob when it is several tokens) and generates text (for
chain-of-thought, critiques and revisions). `ai_feedback` labels response pairs under sampled
principles of a `Constitution`, both orders, and returns soft-label preference rows
(`labels`). The prompts go through the tokenizer exactly as any prompt does
(`models.encode_prompts`: a tokenizer with a chat template renders them as a user turn).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence

import jax
import numpy as np

from rlhf_jax import models
from rlhf_jax.generation import SamplingConfig
from rlhf_jax.inference import Sampler, Scorer, decode_responses
from rlhf_jax.placement import PlacedModel
from rlhf_jax.training.feedback import labels as labels_lib
from rlhf_jax.training.feedback.constitution import Constitution


@dataclasses.dataclass(frozen=True, kw_only=True)
class FeedbackConfig:
    principles_per_pair: int = 4  # principles drawn (without replacement) for each pair
    both_orders: bool = True  # ask in both orders and average (position debiasing)
    cot: bool = False  # the judge reasons before answering (then probabilities are clamped)
    cot_clamp: tuple[float, float] = (0.4, 0.6)  # Bai et al.'s clamp of CoT probabilities
    cot_max_tokens: int = 64  # reasoning length
    cot_temperature: float = 0.0  # 0 = greedy reasoning
    batch_size: int = 64

    def __post_init__(self):
        if self.principles_per_pair < 1:
            raise ValueError(f"principles_per_pair={self.principles_per_pair}; expected >= 1")
        lo, hi = self.cot_clamp
        if not 0.0 <= lo <= 0.5 <= hi <= 1.0:
            raise ValueError(f"cot_clamp={self.cot_clamp}; expected 0 <= lo <= 0.5 <= hi <= 1")


class FeedbackModel:
    """A placed causal LM and its tokenizer, asked for option probabilities and for text."""

    def __init__(self, model: PlacedModel, tokenizer, *, batch_size: int = 64):
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
        self._scorer = Scorer(model, batch_size=batch_size)
        self._samplers: dict = {}
        config = model.config
        self.eos_ids = tuple(config.eos_token_ids) if config and config.eos_token_ids else ()
        self.eos_ids = self.eos_ids or (tokenizer.eos_token_id,)

    def encode(self, texts: Sequence[str]):
        return models.encode_prompts(self.tokenizer, list(texts), max_length=None)

    def option_ids(self, options: Sequence[str]) -> list[list[int]]:
        out = []
        for option in options:
            ids = self.tokenizer(option, add_special_tokens=False)["input_ids"]
            if not ids:
                raise ValueError(f"option {option!r} encodes to no tokens")
            out.append(ids)
        if len({tuple(i) for i in out}) < len(out):
            raise ValueError(f"options {list(options)} encode to the same tokens")
        return out

    def option_logprobs(self, texts: Sequence[str], options: Sequence[str]) -> np.ndarray:
        """log P(option | text) (N, len(options)), float64: one forward when every option is
        one token, else each option's summed token log-probs."""
        ids = self.option_ids(options)
        p, pm = self.encode(texts)
        if all(len(i) == 1 for i in ids):
            return self._scorer.next_token_logprobs(p, pm, [i[0] for i in ids]).astype(np.float64)
        out = []
        for option in ids:
            r = np.tile(np.asarray(option, np.int32), (len(texts), 1))
            out.append(self._scorer.logprob(p, pm, r, np.ones_like(r, bool)))
        return np.stack(out, axis=1).astype(np.float64)

    def generate(
        self, texts: Sequence[str], *, max_new_tokens: int, temperature: float, key
    ) -> tuple[list[str], np.ndarray]:
        """(continuations, whether each reached EOS) of each text."""
        cfg = SamplingConfig(
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            eos_ids=self.eos_ids,
            pad_id=self.tokenizer.pad_token_id,
        )
        if cfg not in self._samplers:
            self._samplers[cfg] = Sampler(self.model, cfg, batch_size=self.batch_size)
        p, pm = self.encode(texts)
        tokens, mask = self._samplers[cfg](p, pm, key)
        return decode_responses(self.tokenizer, tokens, mask, cfg.eos_ids)


def draw_principles(constitution: Constitution, n: int, k: int, rng) -> np.ndarray:
    """(N, K) principle indices: K distinct ones per pair (all of them, shuffled, if K >= all)."""
    k = min(k, len(constitution.principles))
    rows = [rng.permutation(len(constitution.principles))[:k] for _ in range(n)]
    return np.stack(rows) if rows else np.zeros((0, k), np.int64)


def ai_feedback(
    judge: FeedbackModel,
    constitution: Constitution,
    prompts: Sequence[str],
    responses_a: Sequence[str],
    responses_b: Sequence[str],
    config: FeedbackConfig = FeedbackConfig(),
    *,
    seed: int = 0,
    record_path: str | os.PathLike | None = None,
) -> tuple[list[dict], dict]:
    """Soft-label preference rows for each (prompt, a, b) from the judge (module doc).

    Returns the rows (`labels.preference_rows`) and ``info``: "p_a" (N,), "p_first" (N, K, O),
    "principles" (N, K) names, the agreement statistics (`labels.agreement`) and the mean
    confidence |p − ½|. ``record_path``: every judge prompt (and CoT reasoning) with its
    option probabilities, one JSON line each, for inspection.
    """
    n = len(prompts)
    if not len(responses_a) == len(responses_b) == n:
        raise ValueError(f"{n} prompts, {len(responses_a)} a and {len(responses_b)} b responses")
    rng = np.random.default_rng(seed)
    chosen_k = draw_principles(constitution, n, config.principles_per_pair, rng)
    orders = (0, 1) if config.both_orders else (0,)
    k = chosen_k.shape[1]
    texts, index = [], []
    for i in range(n):
        for j in range(k):
            principle = constitution.principles[chosen_k[i, j]]
            for o in orders:
                first, second = (responses_a[i], responses_b[i])[:: 1 - 2 * o]
                texts.append(
                    constitution.comparison_prompt(
                        prompts[i], first, second, principle, cot=config.cot
                    )
                )
                index.append((i, j, o))
    reasoning = [""] * len(texts)
    if config.cot:
        reasoning, _ = judge.generate(
            texts,
            max_new_tokens=config.cot_max_tokens,
            temperature=config.cot_temperature,
            key=jax.random.key(seed),
        )
        reasoning = [constitution.trim(r) for r in reasoning]
        answer = constitution.cot_answer()
        texts = [f"{t} {r}{answer}" for t, r in zip(texts, reasoning, strict=True)]
    logp = judge.option_logprobs(texts, constitution.options) if texts else np.zeros((0, 2))
    p_first = np.zeros((n, k, len(orders)))
    for (i, j, o), (la, lb) in zip(index, logp, strict=True):
        p_first[i, j, o] = labels_lib.option_probability(la, lb)
    clamp = config.cot_clamp if config.cot else None
    p_a = labels_lib.soft_labels(p_first, clamp=clamp)
    if record_path is not None:
        with open(record_path, "w", encoding="utf-8") as f:
            for t, r, (i, j, o) in zip(texts, reasoning, index, strict=True):
                name = constitution.names[chosen_k[i, j]]
                line = {"pair": i, "principle": name, "order": o, "prompt": t}
                line.update(reasoning=r, p_first=p_first[i, j, o])
                f.write(json.dumps(line) + "\n")
    names = np.asarray(constitution.names, dtype=object)[chosen_k]
    info = {
        "p_a": p_a,
        "p_first": p_first,
        "principles": names,
        "confidence": float(np.mean(np.abs(p_a - 0.5))) if n else float("nan"),
        **labels_lib.agreement(p_first),
    }
    return labels_lib.preference_rows(prompts, responses_a, responses_b, p_a), info
