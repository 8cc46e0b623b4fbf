"""AI feedback from a written constitution (Constitutional AI, Bai et al. 2022; RLAIF).

- `constitution`: the principles file (JSON or YAML), validated, and the prompt templates.
- `labels`: soft labels from option probabilities: both orders, principle ensembles, CoT
  clamping, agreement statistics (pure NumPy).
- `judge`: `FeedbackModel` (any causal LM) and `ai_feedback`, which labels response pairs.
- `revise`: SL-CAI's critique → revision rounds, giving SFT data and revision ≻ draft pairs.
"""

from rlhf_jax.training.feedback.constitution import (
    DEFAULT_TEMPLATES,
    Constitution,
    Principle,
    from_dict,
    load_constitution,
)
from rlhf_jax.training.feedback.judge import (
    FeedbackConfig,
    FeedbackModel,
    ai_feedback,
    draw_principles,
)
from rlhf_jax.training.feedback.labels import (
    a_better,
    agreement,
    option_probability,
    preference_rows,
    soft_labels,
)
from rlhf_jax.training.feedback.revise import RevisionConfig, critique_and_revise

__all__ = [
    "DEFAULT_TEMPLATES",
    "Constitution",
    "FeedbackConfig",
    "FeedbackModel",
    "Principle",
    "RevisionConfig",
    "a_better",
    "agreement",
    "ai_feedback",
    "critique_and_revise",
    "draw_principles",
    "from_dict",
    "load_constitution",
    "option_probability",
    "preference_rows",
    "soft_labels",
]
