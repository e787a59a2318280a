"""Training data for aligngate's helpers and base model: loaders, builders, templates and a BPO-style teacher.

Pure Python (stdlib + httpx for the teacher), so it runs in the base install and in fast tests; what it emits
are plain dicts / JSONL in TRL's formats (conversational preference, prompt-completion, unpaired/KTO), which
``datasets.Dataset.from_list`` or ``load_dataset("json", ...)`` take as they are.

Modules: :mod:`~train.data.formats` (records, JSONL I/O), :mod:`~train.data.loaders` (files → records),
:mod:`~train.data.templates` (helper prompt templates), :mod:`~train.data.builders` (records → training sets,
splits), :mod:`~train.data.teacher` (teacher-LLM construction of rewriter pairs), :mod:`~train.data.bundled`
(paths of ``train/datasets/``), :mod:`~train.data.cli` (``python -m train.data``).
"""

from train.data.builders import (
    add_identity_pairs,
    aligner_sft,
    aligner_triplets,
    bpo_word_ratio_ok,
    dolly_prompt,
    preference_to_kto,
    preferences_from_bpo,
    rewriter_pairs,
    rewriter_sft,
    sft_from_dolly,
    sft_from_preferences,
    split_key,
    train_eval_split,
)
from train.data.formats import (
    AlignerTriplet,
    BPORow,
    DataFormatError,
    DollyRow,
    Message,
    PreferenceRecord,
    PromptCompletionRecord,
    RewriterPair,
    UnpairedRecord,
    read_jsonl,
    render_conversation,
    write_jsonl,
)
from train.data.loaders import (
    Loaded,
    load_any,
    load_bpo,
    load_dolly,
    load_gateway_export,
    load_hh_rlhf,
    load_messages_jsonl,
    load_preferences_jsonl,
    load_prompt_completion,
    load_unpaired,
)
from train.data.templates import render_aligner_prompt, render_rewriter_prompt

__all__ = [
    "AlignerTriplet",
    "BPORow",
    "DataFormatError",
    "DollyRow",
    "Loaded",
    "Message",
    "PreferenceRecord",
    "PromptCompletionRecord",
    "RewriterPair",
    "UnpairedRecord",
    "add_identity_pairs",
    "aligner_sft",
    "aligner_triplets",
    "bpo_word_ratio_ok",
    "dolly_prompt",
    "load_any",
    "load_bpo",
    "load_dolly",
    "load_gateway_export",
    "load_hh_rlhf",
    "load_messages_jsonl",
    "load_preferences_jsonl",
    "load_prompt_completion",
    "load_unpaired",
    "preference_to_kto",
    "preferences_from_bpo",
    "read_jsonl",
    "render_aligner_prompt",
    "render_conversation",
    "render_rewriter_prompt",
    "rewriter_pairs",
    "rewriter_sft",
    "sft_from_dolly",
    "sft_from_preferences",
    "split_key",
    "train_eval_split",
    "write_jsonl",
]
