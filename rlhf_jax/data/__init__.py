"""Training data: HF `datasets` rows → validated, tokenised, bucketed, static-shape batches.

    from rlhf_jax import data
    config = data.DataConfig(path="prefs.jsonl", bucket_lengths=(128, 256), batch_size=16)
    train, eval_ = data.load_train_eval(config, tokenizer)
    print(train.report.summary())                 # rows dropped/truncated, by reason
    batches = data.make_iterator(train, config)   # seeded, resumable, this host's rows
    batch = next(batches)
    ...checkpoint batches.state() with the model; batches.restore(state) on resume.

Sources: a local .json/.jsonl/.parquet file (by extension), a local directory, or an HF hub
dataset name (`load_rows`). RL prompt sets: the "prompt" column of any of them (`load_prompts`).

Formats, detected from the columns or named by ``DataConfig.format`` (details in
`rlhf_jax.data.formats`):
    sft         prompt/completion strings (or TRL conversational lists), or ``messages`` chat
                lists whose final assistant turn is the response (the only turn with loss)
    preference  prompt/chosen/rejected strings; chosen/rejected message lists with the
                shared earlier messages as the prompt (Anthropic HH as in TRL); a prompt
                string with chosen/rejected [user, assistant] lists (UltraFeedback-binarized)
    ranking     prompt, responses (list of strings), ranks (list of ints, 0 = best)
Conversational rows use the tokenizer's chat template; string rows never do. Every response
ends with EOS. Rows that are malformed, empty or too long are counted by reason in the
dataset's `DataReport` (``strict=True`` raises instead, naming file, row and reason); with
``too_long="truncate"`` the prompt is cut from the left and the row counted as truncated.

Batches (dicts of NumPy arrays; B = rows on this host, T = the batch's bucket length, one of
``bucket_lengths``, K = response slots; all right-padded):
    sft         tokens_BxT int32, loss_mask_BxT bool, attn_mask_BxT bool, positions_BxT int32
    preference  chosen_{tokens,loss_mask,attn_mask,positions}_BxT and the same for rejected_,
                padded to one T, so that both can go through one forward concatenated on B
    ranking     tokens_BxKxT, loss_mask_BxKxT, attn_mask_BxKxT, positions_BxKxT, mask_BxK
                (response k exists), ranks_BxK int32
    all         example_mask_B (False: a filler row of a bucket's last batch, every mask 0),
                example_id_B (index into the TokenizedDataset, -1 for filler rows)
    window      sft/preference, unless ``DataConfig.response_window=False``:
                {prefix}window_BxW int32 and {prefix}window_mask_BxW bool, the W positions
                whose logits predict response tokens (`collate`'s doc)
``loss_mask`` is True exactly at response tokens (EOS included). Shift convention:
``logits[:, t]`` predicts ``tokens[:, t + 1]``, so a step takes ``logits[:, :-1]`` against
``tokens[:, 1:]`` and masks with ``loss_mask[:, 1:]`` (``loss_mask[:, 0]`` is always False:
every sequence starts with a prompt token, BOS at least). ``positions`` equal
`rlhf_jax.models.positions_from_mask(attn_mask)`.

A batch has the same B always and one of ``len(bucket_lengths)`` sequence lengths, so a jitted
step traces at most once per bucket.
"""

from rlhf_jax.data.buckets import Fit, fit_to_bucket, truncate_prompt
from rlhf_jax.data.collate import collate, response_window, window_indices
from rlhf_jax.data.config import FORMATS, TOO_LONG_POLICIES, DataConfig
from rlhf_jax.data.encoding import Example, TokenizedDataset, check_tokens, tokenize_rows
from rlhf_jax.data.formats import KINDS, Record, detect_kind
from rlhf_jax.data.iterator import BatchIterator, epoch_plan
from rlhf_jax.data.loading import load_rows
from rlhf_jax.data.pipeline import load_data, load_train_eval, make_iterator
from rlhf_jax.data.prompts import PromptSet, load_prompt_rows, load_prompts
from rlhf_jax.data.report import REASONS, DataReport, RowError
from rlhf_jax.data.split import train_eval_split

__all__ = [
    "FORMATS",
    "KINDS",
    "REASONS",
    "TOO_LONG_POLICIES",
    "BatchIterator",
    "DataConfig",
    "DataReport",
    "Example",
    "Fit",
    "PromptSet",
    "Record",
    "RowError",
    "TokenizedDataset",
    "check_tokens",
    "collate",
    "detect_kind",
    "epoch_plan",
    "fit_to_bucket",
    "load_data",
    "load_prompt_rows",
    "load_prompts",
    "load_rows",
    "load_train_eval",
    "make_iterator",
    "response_window",
    "tokenize_rows",
    "train_eval_split",
    "truncate_prompt",
    "window_indices",
]
