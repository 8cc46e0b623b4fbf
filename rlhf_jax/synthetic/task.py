"""The embedded synthetic task: a tiny language with a known gold reward r*(prompt, response).

Every claim about learning in the pipeline (pretrain → SFT → preferences → reward model →
PPO/DPO) can be checked against ground truth, the way Gao et al. 2022 ("Scaling Laws for
Reward Model Overoptimization") judge policies by a gold model.

The language. A prompt is an instruction word, L symbols from an ordered alphabet ("0".."9",
then "a".."z") and "=":

    prompt "sort 3 1 4 ="      ideal response "1 3 4"
    prompt "reverse 3 1 4 ="   ideal response "4 1 3"
    prompt "copy 3 1 4 ="      ideal response "3 1 4"

Tokens are whole words (vocabulary: <pad> <bos> <eos> <unk> = copy reverse sort + symbols,
at most 44), and BOS goes in front of every text, so a prompt is L + 3 tokens.

Gold reward. With target y (L symbols) and response z (M tokens before EOS), positions
i < min(L, M) earn credit c_i = 1 when z_i = y_i, ``near_miss_credit`` when both are symbols
one step apart in the alphabet, else 0; then

    r* = 2 Σ_i c_i / max(L, M) − 1  −  no_eos_penalty · [no EOS]

so the ideal response scores 1, an empty or all-wrong one −1, each extra or missing token
costs through the max(L, M) denominator, and a response that never ends pays the penalty.

Data. A pretraining text runs ``pretrain_examples`` prompt-plus-response examples together with
noisy responses (``pretrain_corruption``), so a base LM learns the language but not to stop
after one answer; demonstrations are the ideal response with each symbol replaced by
a different one with probability ``demo_corruption`` and sometimes a symbol too many or too
few (``length_noise``), so an SFT policy lands in the middle of the gold scale. Train and eval
prompts are split by a hash of the prompt text, so they are disjoint for every seed and size.

Raters (`label_pairs`, Bradley–Terry; details in `rlhf_jax.synthetic.raters`): a rater
prefers a to b with probability σ((u_a − u_b) / τ) where u = score + length_bias · M +
agreement_bias · (response symbols equal to the prompt symbol at the same position). The score
is r* for most raters; a ``disagreement`` share of raters ignore order, and a
``random_label_rate`` share of labels are coin flips. The biases are what a reward model can
learn on purpose and a policy can then exploit: longer answers, parroting the prompt.

Letters: B batch, P prompt tokens, R response tokens, V vocabulary.
"""

from __future__ import annotations

import dataclasses
import json
import os
import zlib
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import transformers
from tokenizers import Tokenizer, models, pre_tokenizers, processors

from rlhf_jax.synthetic import feedback, gold, raters

SPECIALS = ("<pad>", "<bos>", "<eos>", "<unk>")
PAD_ID, BOS_ID, EOS_ID, UNK_ID = range(4)
SEPARATOR = "="
INSTRUCTIONS = ("copy", "reverse", "sort")  # all are in the vocabulary, whichever are used
ALPHABET = tuple("0123456789abcdefghijklmnopqrstuvwxyz")
SPLITS = ("train", "eval")
# Independent random streams, so that e.g. asking for more demonstrations never changes the
# prompts or the pretraining corpus of the same seed.
_STREAMS = {"train": 1, "eval": 2, "pretrain": 3, "demos": 4, "labels": 5, "feedback": 6}


@dataclasses.dataclass(frozen=True)
class SyntheticTaskConfig:
    seed: int = 0  # seeds every generator; each method draws from its own stream
    alphabet_size: int = 10  # symbols "0".."9" then "a".."z" (2..36); ordered, for sort
    instructions: tuple[str, ...] = INSTRUCTIONS  # the transforms prompts ask for
    min_length: int = 3  # fewest symbols in a prompt (the ideal response has as many)
    max_length: int = 6  # most symbols in a prompt
    eval_fraction: float = 0.1  # share of all prompts held out for evaluation (by hash)
    near_miss_credit: float = 0.5  # gold credit for a symbol one alphabet step off the target
    no_eos_penalty: float = 1.0  # subtracted from r* when the response never emits EOS
    pretrain_corruption: float = 0.2  # chance each pretraining response symbol is random
    pretrain_examples: int = 2  # examples run together per pretraining text (no EOS between)
    demo_corruption: float = 0.3  # chance each demonstration symbol is a wrong one
    length_noise: float = 0.2  # chance a pretraining/demo response is one symbol long or short
    rater_temperature: float = 0.1  # τ in σ(Δu/τ); 0 = raters always pick the higher utility
    disagreement: float = 0.0  # share of raters who ignore order (score symbol overlap)
    random_label_rate: float = 0.0  # share of labels that are coin flips (careless raters)
    length_bias: float = 0.0  # rater utility bonus per response token (prefers longer)
    agreement_bias: float = 0.0  # bonus per response symbol equal to the prompt's at its place
    # The feedback language (`rlhf_jax.synthetic.feedback`): this share of pretraining texts
    # are judgements or critiques under principles; > 0 adds its words to the vocabulary.
    feedback_examples: float = 0.0
    feedback_temperature: float = 0.1  # τ of the judgements in those texts
    revision_corruption: float = 0.05  # chance each symbol of a revision in them is wrong

    def __post_init__(self):
        def fail(field, why):
            raise ValueError(f"SyntheticTaskConfig.{field}={getattr(self, field)!r}: {why}")

        if not 2 <= self.alphabet_size <= len(ALPHABET):
            fail("alphabet_size", f"expected 2..{len(ALPHABET)}")
        if not self.instructions or not set(self.instructions) <= set(INSTRUCTIONS):
            fail("instructions", f"expected a non-empty tuple drawn from {INSTRUCTIONS}")
        if not 1 <= self.min_length <= self.max_length:
            fail("min_length", f"expected 1 <= min_length <= max_length ({self.max_length})")
        if self.pretrain_examples < 1:
            fail("pretrain_examples", "expected at least 1")
        if not 0.0 < self.eval_fraction < 1.0:
            fail("eval_fraction", "expected a fraction strictly between 0 and 1")
        for field in (
            "near_miss_credit",
            "pretrain_corruption",
            "demo_corruption",
            "length_noise",
            "disagreement",
            "random_label_rate",
            "feedback_examples",
            "revision_corruption",
        ):
            if not 0.0 <= getattr(self, field) <= 1.0:
                fail(field, "expected a value in [0, 1]")
        for field in ("no_eos_penalty", "rater_temperature", "feedback_temperature"):
            if getattr(self, field) < 0:
                fail(field, "expected a value >= 0")


def write_jsonl(path: str | os.PathLike, rows: Iterable[Mapping]) -> str:
    """Writes one JSON object per line (the loaders' .jsonl format); returns the path."""
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return os.fspath(path)


class SyntheticTask:
    """Prompts, corpora, gold reward and simulated raters of the synthetic task (module doc)."""

    def __init__(self, config: SyntheticTaskConfig = SyntheticTaskConfig()):
        self.config = config
        self.symbols = ALPHABET[: config.alphabet_size]
        words = (*SPECIALS, SEPARATOR, *INSTRUCTIONS, *self.symbols)
        if config.feedback_examples > 0:
            words = (*words, *feedback.WORDS)
        self.vocab: dict[str, int] = {w: i for i, w in enumerate(words)}
        self.vocab_size = len(words)
        self.eos_id, self.pad_id = EOS_ID, PAD_ID
        # Per-token-id tables for the token-level gold reward: symbol rank or -1, and
        # instruction index or -1.
        self.symbol_value_V = np.full(self.vocab_size, -1, np.int32)
        self.instruction_V = np.full(self.vocab_size, -1, np.int32)
        for k, s in enumerate(self.symbols):
            self.symbol_value_V[self.vocab[s]] = k
        for k, w in enumerate(INSTRUCTIONS):
            self.instruction_V[self.vocab[w]] = k
        self._value = {s: k for k, s in enumerate(self.symbols)}

    # ---- sizes -----------------------------------------------------------------------------

    @property
    def max_prompt_tokens(self) -> int:
        """Tokens of the longest prompt: BOS, instruction, symbols, "="."""
        return self.config.max_length + 3

    @property
    def max_response_tokens(self) -> int:
        """Tokens of the longest generated data response: one symbol of length noise, EOS."""
        return self.config.max_length + 2

    @property
    def max_pretraining_tokens(self) -> int:
        """Tokens of the longest pretraining text: BOS, its examples (or a feedback text), EOS."""
        plain = 2 + self.config.pretrain_examples * (2 * self.config.max_length + 3)
        return max(plain, feedback.max_text_tokens(self)) if self.feedback else plain

    @property
    def feedback(self) -> bool:
        """Whether the language carries judgements, critiques and revisions."""
        return self.config.feedback_examples > 0

    # ---- tokenizer -------------------------------------------------------------------------

    def write_tokenizer(self, directory: str | os.PathLike):
        """Saves the word-level tokenizer to ``directory`` and returns it reloaded from there.

        Words split on whitespace only, so one word is one token (unknown words are <unk>);
        BOS is added in front of every text; ``decode`` joins tokens with spaces.
        """
        tok = Tokenizer(models.WordLevel(vocab=self.vocab, unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        tok.post_processor = processors.TemplateProcessing(
            single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", BOS_ID)]
        )
        fast = transformers.PreTrainedTokenizerFast(
            tokenizer_object=tok,
            pad_token="<pad>",
            bos_token="<bos>",
            eos_token="<eos>",
            unk_token="<unk>",
        )
        os.makedirs(directory, exist_ok=True)
        fast.save_pretrained(directory)
        return transformers.AutoTokenizer.from_pretrained(directory)

    # ---- prompts and corpora -----------------------------------------------------------------

    def _rng(self, stream: str) -> np.random.Generator:
        return np.random.default_rng([self.config.seed, _STREAMS[stream]])

    def split_of(self, prompt: str) -> str:
        """The split ("train" or "eval") of a prompt: a fixed hash of its text, whatever the
        seed, so the splits are disjoint for every seed and number of prompts."""
        bucket = zlib.crc32(prompt.encode()) % 1_000_000
        return "eval" if bucket < self.config.eval_fraction * 1_000_000 else "train"

    def _draw_prompt(self, rng: np.random.Generator, split: str) -> str:
        c = self.config
        for _ in range(100_000):
            instruction = c.instructions[rng.integers(len(c.instructions))]
            length = int(rng.integers(c.min_length, c.max_length + 1))
            symbols = rng.integers(c.alphabet_size, size=length)
            prompt = " ".join([instruction, *(self.symbols[k] for k in symbols), SEPARATOR])
            if self.split_of(prompt) == split:
                return prompt
        raise ValueError(
            f"no {split} prompt in 100000 draws; raise alphabet_size, max_length or (for eval) "
            "eval_fraction"
        )

    def prompts(self, n: int, *, split: str = "train") -> list[str]:
        """``n`` distinct prompts of ``split``; seeded, and the first k of n are prompts(k)."""
        if split not in SPLITS:
            raise ValueError(f"split={split!r}; expected one of {SPLITS}")
        rng, seen, out = self._rng(split), set(), []
        for _ in range(100 * n + 1000):  # generous: the default task has ~3M prompts
            if len(out) == n:
                break
            prompt = self._draw_prompt(rng, split)
            if prompt not in seen:
                seen.add(prompt)
                out.append(prompt)
        if len(out) < n:
            raise ValueError(
                f"found only {len(out)} distinct {split} prompts of {n} requested; raise "
                "alphabet_size, max_length or (for eval) eval_fraction"
            )
        return out

    def noisy_response(
        self, prompt: str, rng: np.random.Generator, *, rate: float, different: bool = True
    ) -> str:
        """The ideal response with each symbol replaced with probability ``rate`` (by a
        different symbol when ``different``, else by a uniform one), then with probability
        ``length_noise`` one symbol dropped or added at the end: how demonstrations and
        pretraining responses are made."""
        a = self.config.alphabet_size
        out = []
        for y in self.target(prompt):
            if rng.random() < rate:
                y = (y + 1 + int(rng.integers(a - 1))) % a if different else int(rng.integers(a))
            out.append(y)
        if rng.random() < self.config.length_noise:
            if rng.random() < 0.5 and len(out) > 1:
                out.pop()
            else:
                out.append(int(rng.integers(a)))
        return " ".join(self.symbols[k] for k in out)

    def _response_rows(self, n: int, stream: str, rate: float, different: bool):
        rng = self._rng(stream)
        for _ in range(n):
            prompt = self._draw_prompt(rng, "train")
            yield prompt, self.noisy_response(prompt, rng, rate=rate, different=different)

    def pretraining_corpus(self, n: int) -> list[dict]:
        """``n`` rows {"prompt": "", "completion": text} of plain LM text on train prompts.

        A text is ``pretrain_examples`` "prompt response" examples run together, responses
        corrupted at ``pretrain_corruption``: a base LM learns the language and the transforms
        but not to stop after one answer, which SFT (EOS after every completion) teaches.
        """
        k = self.config.pretrain_examples
        rows = self._response_rows(n * k, "pretrain", self.config.pretrain_corruption, False)
        texts = [f"{p} {r}" for p, r in rows]
        out = [" ".join(texts[i : i + k]) for i in range(0, n * k, k)]
        if self.feedback:  # its own stream: the plain texts stay those of the same seed
            rng = self._rng("feedback")
            for i in range(n):
                if rng.random() < self.config.feedback_examples:
                    out[i] = feedback.text(self, self._draw_prompt(rng, "train"), rng)
        return [{"prompt": "", "completion": t} for t in out]

    def demonstrations(self, n: int) -> list[dict]:
        """``n`` SFT rows {"prompt", "completion"} on train prompts, of middling quality."""
        rows = self._response_rows(n, "demos", self.config.demo_corruption, True)
        return [{"prompt": p, "completion": r} for p, r in rows]

    # ---- gold reward -------------------------------------------------------------------------

    def parse_prompt(self, prompt: str) -> tuple[int, list[int]]:
        """(instruction index, symbol values) of a well-formed prompt; raises otherwise."""
        words = prompt.split()
        ok = (
            len(words) >= 3
            and words[0] in INSTRUCTIONS
            and words[-1] == SEPARATOR
            and all(w in self._value for w in words[1:-1])
        )
        if not ok:
            raise ValueError(
                f"prompt {prompt!r} is not '<{'|'.join(INSTRUCTIONS)}> <symbols> {SEPARATOR}' "
                f"with symbols from {''.join(self.symbols)!r}"
            )
        return INSTRUCTIONS.index(words[0]), [self._value[w] for w in words[1:-1]]

    def target(self, prompt: str) -> list[int]:
        """The ideal response's symbols as alphabet ranks."""
        instruction, x = self.parse_prompt(prompt)
        return [list(x), x[::-1], sorted(x)][instruction]

    def ideal_response(self, prompt: str) -> str:
        """The response with r* = 1, e.g. "1 3 4" for "sort 3 1 4 ="."""
        return " ".join(self.symbols[k] for k in self.target(prompt))

    def response_values(self, response: str) -> tuple[list[int], bool]:
        """(symbol value or -1 per word before any "<eos>", whether "<eos>" was there)."""
        words = response.split()
        ended = "<eos>" in words
        if ended:
            words = words[: words.index("<eos>")]
        return [self._value.get(w, -1) for w in words], ended

    def gold_reward(
        self, prompts: Sequence[str], responses: Sequence[str], *, ended=None
    ) -> np.ndarray:
        """r* of each (prompt, response) pair, float64 (B,) (`gold.gold_reward`)."""
        return gold.gold_reward(self, prompts, responses, ended=ended)

    def gold_reward_tokens(
        self, prompt_ids_BxP, prompt_mask_BxP, response_ids_BxR, response_mask_BxR
    ):
        """r* from token ids, float32 (B,); jittable (`gold.gold_reward_tokens`)."""
        return gold.gold_reward_tokens(
            self, prompt_ids_BxP, prompt_mask_BxP, response_ids_BxR, response_mask_BxR
        )

    def echo_rate(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        """Share of each response's words repeating the prompt's symbol at the same position,
        float64 (B,) (`gold.echo_rate`): the feature ``agreement_bias`` raters reward."""
        return gold.echo_rate(self, prompts, responses)

    def echo_rate_tokens(
        self, prompt_ids_BxP, prompt_mask_BxP, response_ids_BxR, response_mask_BxR
    ):
        """`echo_rate` from token ids, float32 (B,); jittable (`gold.echo_rate_tokens`)."""
        return gold.echo_rate_tokens(
            self, prompt_ids_BxP, prompt_mask_BxP, response_ids_BxR, response_mask_BxR
        )

    # ---- response statistics and raters -------------------------------------------------------

    def response_stats(self, prompts: Sequence[str], responses: Sequence[str]) -> dict:
        """Per response, int64 (B,): "length" (tokens before EOS) and "prompt_matches" (symbols
        equal to the prompt symbol at the same position) — what the rater biases reward."""
        length, agreement = [], []
        for prompt, response in zip(prompts, responses, strict=True):
            _, x = self.parse_prompt(prompt)
            z, _ = self.response_values(response)
            length.append(len(z))
            agreement.append(sum(zi == xi for zi, xi in zip(z, x, strict=False)))
        return {
            "length": np.asarray(length, np.int64),
            "prompt_matches": np.asarray(agreement, np.int64),
        }

    def label_pairs(
        self,
        prompts: Sequence[str],
        responses_a: Sequence[str],
        responses_b: Sequence[str],
        *,
        seed: int | None = None,
        rng: np.random.Generator | None = None,
    ) -> tuple[list[dict], dict]:
        """Simulated raters label each pair: `raters.label_pairs` has the details.

        Randomness from ``rng``, else ``seed``, else the config's seed. Returns preference
        rows {"prompt", "chosen", "rejected"} and ``info`` (gold margins, label agreement
        with r*, how often the longer or more prompt-like response won).
        """
        if rng is None:
            rng = np.random.default_rng(
                [self.config.seed, _STREAMS["labels"]] if seed is None else seed
            )
        return raters.label_pairs(self, prompts, responses_a, responses_b, rng=rng)
