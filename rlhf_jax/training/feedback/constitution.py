"""A constitution: the written principles AI feedback judges and revises by (Bai et al. 2022).

A JSON or YAML file:

    principles:                       # one or more; names unique
      - name: harmless
        critique: "Identify ways in which the response is harmful or unethical."
        revision: "Rewrite the response to remove anything harmful or unethical."
        comparison: "Which of these responses is less harmful?"
    options: ["A", "B"]               # optional: the two option strings the judge answers with
    stop: ["\\n\\nHuman:"]              # optional: generated critiques/revisions end at these
    templates:                        # optional: each replaces the default below
      comparison: "..."               # fields {prompt} {question} {a} {b}
      comparison_cot: "..."           # the same fields; the model then writes its reasoning
      cot_answer: "..."               # appended after the reasoning, before the option
      critique: "..."                 # fields {prompt} {response} {request}
      revision: "..."                 # fields {prompt} {response} {request} {critique_text}
                                      #   and {revision_request}
    few_shot:                         # optional: text put in front of each kind of prompt
      comparison: "..."
      critique: "..."
      revision: "..."

The judge reads the principle's ``comparison`` question as text in its prompt and answers
with the first or the second option; the option's next-token probability is the label
(`rlhf_jax.training.feedback.labels`). Every error names the file and the entry.
"""

from __future__ import annotations

import dataclasses
import json
import os
import string
from collections.abc import Mapping

PRINCIPLE_FIELDS = ("name", "critique", "revision", "comparison")
TEMPLATE_FIELDS: dict[str, frozenset[str]] = {
    "comparison": frozenset({"prompt", "question", "a", "b"}),
    "comparison_cot": frozenset({"prompt", "question", "a", "b"}),
    "cot_answer": frozenset(),
    "critique": frozenset({"prompt", "response", "request"}),
    "revision": frozenset({"prompt", "response", "request", "critique_text", "revision_request"}),
}
FEW_SHOT_KINDS = ("comparison", "critique", "revision")

# The plain-text conversation format of Bai et al.'s feedback prompts (own wording).
DEFAULT_TEMPLATES: dict[str, str] = {
    "comparison": (
        "Consider the following conversation between a human and an assistant:\n\n"
        "Human: {prompt}\n\n{question}\nOptions:\n(A) {a}\n(B) {b}\nThe answer is: ("
    ),
    "comparison_cot": (
        "Consider the following conversation between a human and an assistant:\n\n"
        "Human: {prompt}\n\n{question}\nOptions:\n(A) {a}\n(B) {b}\n"
        "Let's think step by step:"
    ),
    "cot_answer": "\nSo the answer is: (",
    "critique": (
        "Human: {prompt}\n\nAssistant: {response}\n\nCritique request: {request}\n\nCritique:"
    ),
    "revision": (
        "Human: {prompt}\n\nAssistant: {response}\n\nCritique request: {request}\n\n"
        "Critique: {critique_text}\n\nRevision request: {revision_request}\n\nRevision:"
    ),
}


@dataclasses.dataclass(frozen=True)
class Principle:
    name: str
    critique: str  # the critique request
    revision: str  # the revision request
    comparison: str  # the question the judge answers with an option


@dataclasses.dataclass(frozen=True)
class Constitution:
    principles: tuple[Principle, ...]
    options: tuple[str, str] = ("A", "B")
    stop: tuple[str, ...] = ()
    templates: Mapping[str, str] = dataclasses.field(
        default_factory=lambda: dict(DEFAULT_TEMPLATES)
    )
    few_shot: Mapping[str, str] = dataclasses.field(default_factory=dict)
    source: str = ""

    def __post_init__(self):
        _check(self)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.principles)

    def principle(self, name: str) -> Principle:
        for p in self.principles:
            if p.name == name:
                return p
        raise KeyError(f"{self.source or 'constitution'}: no principle {name!r}; has {self.names}")

    def subset(self, names) -> Constitution:
        """The constitution with only the principles ``names`` (in that order)."""
        return dataclasses.replace(self, principles=tuple(self.principle(n) for n in names))

    # -- prompts -------------------------------------------------------------------------------
    def comparison_prompt(self, prompt: str, a: str, b: str, principle: Principle, *, cot=False):
        """The judge's prompt: the conversation, the principle's question, (A) a and (B) b."""
        kind = "comparison_cot" if cot else "comparison"
        body = self.templates[kind].format(prompt=prompt, question=principle.comparison, a=a, b=b)
        return self.few_shot.get("comparison", "") + body

    def cot_answer(self) -> str:
        return self.templates["cot_answer"]

    def critique_prompt(self, prompt: str, response: str, principle: Principle) -> str:
        body = self.templates["critique"].format(
            prompt=prompt, response=response, request=principle.critique
        )
        return self.few_shot.get("critique", "") + body

    def revision_prompt(
        self, prompt: str, response: str, principle: Principle, critique_text: str
    ) -> str:
        body = self.templates["revision"].format(
            prompt=prompt,
            response=response,
            request=principle.critique,
            critique_text=critique_text,
            revision_request=principle.revision,
        )
        return self.few_shot.get("revision", "") + body

    def trim(self, text: str) -> str:
        """A generated text up to the first stop string, stripped."""
        for s in self.stop:
            if s in text:
                text = text[: text.index(s)]
        return text.strip()


def _fields(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}


def _check(c: Constitution) -> None:
    where = c.source or "constitution"

    def fail(entry, why):
        raise ValueError(f"{where}: {entry}: {why}")

    if not c.principles:
        fail("principles", "expected at least one principle")
    seen = set()
    for i, p in enumerate(c.principles):
        for field in PRINCIPLE_FIELDS:
            value = getattr(p, field)
            if not isinstance(value, str) or not value.strip():
                fail(f"principles[{i}].{field}", f"expected a non-empty string; got {value!r}")
        if p.name in seen:
            fail(f"principles[{i}].name", f"{p.name!r} is used twice")
        seen.add(p.name)
    if len(c.options) != 2 or not all(isinstance(o, str) and o for o in c.options):
        fail("options", f"expected two non-empty strings; got {list(c.options)!r}")
    if c.options[0] == c.options[1]:
        fail("options", f"the two options are the same ({c.options[0]!r})")
    for kind, allowed in TEMPLATE_FIELDS.items():
        template = c.templates.get(kind)
        if not isinstance(template, str):
            fail(f"templates.{kind}", f"expected a string; got {template!r}")
        try:
            fields = _fields(template)
        except ValueError as e:
            fail(f"templates.{kind}", f"not a format string ({e})")
        unknown, missing = fields - allowed, allowed - fields
        if unknown:
            fail(
                f"templates.{kind}", f"unknown fields {sorted(unknown)}; allowed {sorted(allowed)}"
            )
        if missing and kind != "revision":
            fail(f"templates.{kind}", f"missing fields {sorted(missing)}")
    unknown = set(c.templates) - set(TEMPLATE_FIELDS)
    if unknown:
        fail("templates", f"unknown kinds {sorted(unknown)}; expected {sorted(TEMPLATE_FIELDS)}")
    unknown = set(c.few_shot) - set(FEW_SHOT_KINDS)
    if unknown:
        fail("few_shot", f"unknown kinds {sorted(unknown)}; expected {list(FEW_SHOT_KINDS)}")
    for s in c.stop:
        if not isinstance(s, str) or not s:
            fail("stop", f"expected non-empty strings; got {list(c.stop)!r}")


def from_dict(raw: Mapping, *, source: str = "") -> Constitution:
    """A `Constitution` from the file's parsed contents (module docstring)."""
    where = source or "constitution"
    if not isinstance(raw, Mapping):
        raise ValueError(f"{where}: expected a mapping with 'principles'; got {type(raw).__name__}")
    unknown = set(raw) - {"principles", "options", "stop", "templates", "few_shot"}
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)}")
    items = raw.get("principles")
    if not isinstance(items, list):
        raise ValueError(f"{where}: principles: expected a list of principles; got {items!r}")
    principles = []
    for i, item in enumerate(items):
        if not isinstance(item, Mapping):
            raise ValueError(f"{where}: principles[{i}]: expected a mapping; got {item!r}")
        extra = set(item) - set(PRINCIPLE_FIELDS)
        if extra:
            raise ValueError(
                f"{where}: principles[{i}]: unknown keys {sorted(extra)}; expected "
                f"{list(PRINCIPLE_FIELDS)}"
            )
        principles.append(Principle(**{f: item.get(f) for f in PRINCIPLE_FIELDS}))
    for key in ("templates", "few_shot"):
        if not isinstance(raw.get(key, {}), Mapping):
            raise ValueError(f"{where}: {key}: expected a mapping; got {raw[key]!r}")
    for key in ("options", "stop"):
        if not isinstance(raw.get(key, []), list):
            raise ValueError(f"{where}: {key}: expected a list; got {raw[key]!r}")
    return Constitution(
        principles=tuple(principles),
        options=tuple(raw.get("options", ("A", "B"))),
        stop=tuple(raw.get("stop", ())),
        templates={**DEFAULT_TEMPLATES, **raw.get("templates", {})},
        few_shot=dict(raw.get("few_shot", {})),
        source=source,
    )


def load_constitution(path: str | os.PathLike) -> Constitution:
    """Reads a constitution from a .json, .yaml or .yml file (module docstring)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"constitution file not found: {path}")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        if path.endswith((".yaml", ".yml")):
            import yaml

            raw = yaml.safe_load(text)
        elif path.endswith(".json"):
            raw = json.loads(text)
        else:
            raise ValueError("expected a .json, .yaml or .yml file")
    except Exception as e:  # a parse error names the file
        raise ValueError(f"{path}: cannot read the constitution ({e})") from None
    return from_dict(raw, source=path)
