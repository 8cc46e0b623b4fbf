"""The synthetic task's feedback language: judgements, critiques and revisions under principles.

With ``SyntheticTaskConfig.feedback_examples`` > 0 the vocabulary gains the words below and that
share of the pretraining texts are feedback texts instead of plain examples, the way web text
teaches a pretrained LM, imperfectly, to judge and to revise:

    judge correct sort 3 1 4 = A 1 3 4 B 1 4 3 ? A                a judgement, "correct"
    judge correct sort 3 1 4 = A 1 3 B 1 4 ? think A 1 1 ok 3 3 ok short B 1 1 ok 4 3 wrong
        short hence A                                           one reasoning first
    critique concise sort 3 1 4 = 1 3 4 4 ? 1 1 ok 3 3 ok 4 4 ok long revise 1 3 4

The texts follow written rules, one per principle (the utility u the writer compares, with r*
the gold reward, M the response's length, L the target's, E its symbols echoing the prompt
where the target differs from the prompt):

    correct    u = r*                          faults: long, short
    concise    u = r* − 0.5 · max(0, M − L)    faults: long
    original   u = r* − 0.5 · E                faults: echo
    better     u = r* + 0.25 · M + 0.25 · A    none (a vague principle whose writers, like the
                                               biased raters, favour long answers and
                                               parroting; A = all prompt matches)

A judgement picks A with probability σ((u_a − u_b)/τ), τ = ``feedback_temperature``; half
of them reason first after "think": both responses critiqued, then "hence" and the choice.
A critique goes symbol by symbol: the response's symbol, the target's at its place, and "ok"
or "wrong" (a comparison of the two words just written, which a small LM learns where it
cannot judge a whole response at once); then the principle's other faults. The revision is a
fresh answer, each symbol wrong with probability ``revision_corruption`` (with the length noise
of pretraining responses), whatever the critique found. Drafts in these texts are noisy
responses, some parroting the prompt, some too long. The model that learns this language reads
the principle word in its prompt: it is judged by the same `rlhf_jax.training.feedback` code as
any causal LM, with `constitution()`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from rlhf_jax.training.feedback.constitution import Constitution, from_dict

PRINCIPLES = ("correct", "concise", "original", "better")
FAULTS = ("ok", "wrong", "long", "short", "echo")
WORDS = ("judge", "critique", "revise", "A", "B", "?", "think", "hence", *FAULTS, *PRINCIPLES)
_PRINCIPLE_FAULTS = {  # beyond the marks of each symbol, which every principle writes
    "correct": ("long", "short"),
    "concise": ("long",),
    "original": ("echo",),
    "better": (),
}


def constitution(principles: Sequence[str] = PRINCIPLES) -> Constitution:
    """The synthetic language's constitution: its templates, options and the principles named
    (each principle's requests and question are its word)."""
    unknown = set(principles) - set(PRINCIPLES)
    if unknown:
        raise ValueError(f"unknown synthetic principles {sorted(unknown)}; expected {PRINCIPLES}")
    return from_dict(
        {
            "principles": [
                {"name": p, "critique": p, "revision": p, "comparison": p} for p in principles
            ],
            "options": ["A", "B"],
            "stop": ["revise", "hence"],
            "templates": {
                "comparison": "judge {question} {prompt} A {a} B {b} ?",
                "comparison_cot": "judge {question} {prompt} A {a} B {b} ? think",
                "cot_answer": " hence",
                "critique": "critique {request} {prompt} {response} ?",
                "revision": "critique {request} {prompt} {response} ? {critique_text} revise",
            },
        },
        source="synthetic constitution",
    )


def utility(task, principle: str, prompts, responses) -> np.ndarray:
    """u of each response under ``principle`` (module doc), float64 (B,)."""
    gold = task.gold_reward(prompts, responses)
    stats = task.response_stats(prompts, responses)
    if principle == "correct":
        return gold
    if principle == "concise":
        lengths = np.asarray([len(task.target(p)) for p in prompts])
        return gold - 0.5 * np.maximum(stats["length"] - lengths, 0)
    if principle == "original":
        return gold - 0.5 * np.asarray(
            [_echo_faults(task, p, r) for p, r in zip(prompts, responses, strict=True)]
        )
    if principle == "better":
        return gold + 0.25 * stats["length"] + 0.25 * stats["prompt_matches"]
    raise ValueError(f"unknown principle {principle!r}; expected one of {PRINCIPLES}")


def _echo_faults(task, prompt: str, response: str) -> int:
    """Response symbols equal to the prompt's at their place where the target differs."""
    _, x = task.parse_prompt(prompt)
    y = task.target(prompt)
    z, _ = task.response_values(response)
    return sum(zi == xi != yi for zi, xi, yi in zip(z, x, y, strict=False))


def faults(task, principle: str, prompt: str, response: str, answer: str | None = None):
    """A critique's words: for each of the response's first L symbols, the symbol, the
    target's there, and "ok" or "wrong"; then the principle's other faults (long, short, echo)
    in FAULTS order. Against the target, or against ``answer`` (a response) when given."""
    z, _ = task.response_values(response)
    y = task.target(prompt) if answer is None else task.response_values(answer)[0]
    found = {
        "long": len(z) > len(y),
        "short": len(z) < len(y),
        "echo": _echo_faults(task, prompt, response) > 0,
    }
    sym = lambda v: task.symbols[v] if v >= 0 else "?"
    marks = [w for zi, yi in zip(z, y, strict=False)
             for w in (sym(zi), sym(yi), "ok" if zi == yi else "wrong")]  # fmt: skip
    return marks + [f for f in FAULTS[2:] if f in _PRINCIPLE_FAULTS[principle] and found[f]]


def draft(task, prompt: str, rng: np.random.Generator) -> str:
    """A response as feedback texts show them: noisy, sometimes parroting, sometimes long."""
    a = task.config.alphabet_size
    if rng.random() < 0.15:
        _, x = task.parse_prompt(prompt)
        words = [task.symbols[v] for v in x]
    else:
        words = task.noisy_response(prompt, rng, rate=float(rng.uniform(0, 0.6))).split()
    if rng.random() < 0.2:
        words += [task.symbols[int(rng.integers(a))] for _ in range(int(rng.integers(1, 3)))]
    return " ".join(words)


def revision(task, prompt: str, rng) -> str:
    """A revision as the texts write it: a fresh answer, each symbol wrong with probability
    ``revision_corruption`` and the length noise of `noisy_response` (also after a critique
    that found nothing wrong)."""
    rate = task.config.revision_corruption
    return task.noisy_response(prompt, rng, rate=rate) if rate else task.ideal_response(prompt)


def text(task, prompt: str, rng: np.random.Generator) -> str:
    """One feedback text on ``prompt``: a judgement or a critique-and-revision, half each."""
    principle = PRINCIPLES[int(rng.integers(len(PRINCIPLES)))]
    a = draft(task, prompt, rng)
    if rng.random() < 0.5:
        b = draft(task, prompt, rng)
        ua, ub = utility(task, principle, [prompt, prompt], [a, b])
        tau = task.config.feedback_temperature
        p_a = (
            (ua > ub) + 0.5 * (ua == ub) if tau == 0 else 0.5 * (1 + np.tanh((ua - ub) / (2 * tau)))
        )
        answer = "A" if rng.random() < p_a else "B"
        if rng.random() < 0.5:
            fa, fb = (" ".join(faults(task, principle, prompt, r)) for r in (a, b))
            answer = f"think A {fa} B {fb} hence {answer}"
        return f"judge {principle} {prompt} A {a} B {b} ? {answer}"
    found = faults(task, principle, prompt, a)
    fixed = revision(task, prompt, rng)
    return f"critique {principle} {prompt} {a} ? {' '.join(found)} revise {fixed}"


def max_text_tokens(task) -> int:
    """Tokens of the longest feedback text with BOS and EOS: a judgement of two drafts of
    L + 3 symbols reasoning with both critiques, or a critique with every fault and a
    revision of L + 1."""
    m = task.config.max_length
    critique_words = 3 * m + 2  # three words per symbol, long or short, echo
    judge = 1 + 1 + (m + 2) + 1 + (m + 3) + 1 + (m + 3) + 1 + 1
    judge += 1 + 2 * (1 + critique_words) + 1
    critique = 1 + 1 + (m + 2) + (m + 3) + 1 + critique_words + 1 + (m + 1)
    return 2 + max(judge, critique)
