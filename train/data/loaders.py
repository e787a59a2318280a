"""Loaders: read the data formats aligngate trains on and normalise them into :mod:`train.data.formats` records.

Every loader returns a :class:`Loaded` (iterable, ``len()``-able; ``.rows`` is the list) that also reports how
many rows were read, and which were skipped and why. Two kinds of bad input are told apart:

* **structurally malformed** input (invalid JSON, a row that is not an object, a missing required key, a value
  of the wrong type) raises :class:`~train.data.formats.DataFormatError` naming the file and the line;
* **well-formed rows that cannot be used** (an empty answer, a pair whose two transcripts do not share their
  conversation, identical chosen and rejected answers) are skipped and counted by reason.

Preference data is always normalised to TRL's *conversational* preference format: a string prompt becomes one
user message, a string response one assistant message, responses are stripped of surrounding whitespace.
Extra keys (``request_id``, ``arm``, ``source``, ``chosen_model`` ...) are tolerated and dropped.

Kinds (the names ``load_any`` and the CLI take):

========================  =====================================================================  ================
kind                      input rows                                                             records
========================  =====================================================================  ================
``hh-rlhf``               ``{chosen, rejected}`` raw ``\\n\\nHuman: ... \\n\\nAssistant: ...``     PreferenceRecord
``preferences``           ``{prompt?, chosen, rejected}`` (strings or message lists)             PreferenceRecord
``messages``              ``{messages: [...]}`` ending with an assistant turn                    PromptCompletion
``prompt-completion``     ``{prompt, completion}``                                               PromptCompletion
``unpaired``              ``{prompt, completion, label}``                                        UnpairedRecord
``bpo``                   ``{prompt, optimized_prompt?, good_res?, bad_res?}`` (or BPO's         BPORow
                          training layout: ``instruction`` + ``context?`` for ``prompt``)
``dolly``                 ``{instruction, context?, response, category?}``                       DollyRow
``aligner``               ``{question, answer, correction}`` (gateway export)                    AlignerTriplet
``rewriter``              ``{prompt, optimized_prompt}`` (gateway export)                        RewriterPair
========================  =====================================================================  ================
"""

from __future__ import annotations

import itertools
import logging
import os
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

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
    assistant,
    completion_text,
    instruction_prompt,
    iter_json_records,
    user,
)

__all__ = [
    "EXPORT_KINDS",
    "KINDS",
    "Loaded",
    "SkipRow",
    "load_aligner_export",
    "load_any",
    "load_bpo",
    "load_dolly",
    "load_gateway_export",
    "load_hh_rlhf",
    "load_messages_jsonl",
    "load_preferences_jsonl",
    "load_prompt_completion",
    "load_rewriter_export",
    "load_unpaired",
    "parse_hh_pair",
    "sniff_kind",
]

logger = logging.getLogger(__name__)

R = TypeVar("R")
PathLike = str | os.PathLike[str]
ExportKind = Literal["preferences", "aligner", "rewriter"]
EXPORT_KINDS: tuple[str, ...] = ("preferences", "aligner", "rewriter")
KINDS: tuple[str, ...] = (
    "hh-rlhf",
    "preferences",
    "messages",
    "prompt-completion",
    "unpaired",
    "bpo",
    "dolly",
    "aligner",
    "rewriter",
)

# Locations kept per skip reason (the counts are always complete).
_MAX_SKIP_LOCATIONS = 20


class SkipRow(Exception):
    """A well-formed row that cannot be used; ``reason`` is the counter key."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        super().__init__(f"{reason}: {detail}" if detail else reason)


@dataclass
class Loaded(Generic[R]):
    """The records loaded from one file, with what was read and what was skipped (by reason)."""

    path: Path
    kind: str
    rows: list[R] = field(default_factory=list)
    read: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    skipped_at: dict[str, list[str]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[R]:
        return iter(self.rows)

    def __getitem__(self, index: int) -> R:
        return self.rows[index]

    @property
    def n_skipped(self) -> int:
        """Rows read but not kept."""
        return sum(self.skipped.values())

    def skip(self, reason: str, where: str) -> None:
        """Count a skipped row (and remember where, for the first few of each reason)."""
        self.skipped[reason] += 1
        locations = self.skipped_at.setdefault(reason, [])
        if len(locations) < _MAX_SKIP_LOCATIONS:
            locations.append(where)

    def summary(self) -> str:
        """One line: what was kept, what was skipped and where."""
        text = f"{self.kind}: kept {len(self.rows)} of {self.read} rows from {self.path}"
        if self.skipped:
            parts = [f"{r}: {n} ({', '.join(self.skipped_at.get(r, []))})" for r, n in sorted(self.skipped.items())]
            text += f"; skipped {self.n_skipped} ({'; '.join(parts)})"
        return text


# ---------------------------------------------------------------------------------------------------------------
# Field validation


def _field(obj: dict[str, object], key: str, path: Path, where: str) -> object:
    if key not in obj:
        raise DataFormatError(path, where, f"missing key {key!r} (keys: {', '.join(sorted(obj)) or 'none'})")
    return obj[key]


def _str_field(obj: dict[str, object], key: str, path: Path, where: str) -> str:
    value = _field(obj, key, path, where)
    if not isinstance(value, str):
        raise DataFormatError(path, where, f"{key!r} must be a string, got {type(value).__name__}")
    return value


def _opt_str_field(obj: dict[str, object], key: str, path: Path, where: str) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise DataFormatError(path, where, f"{key!r} must be a string, got {type(value).__name__}")
    return value


def _content(value: object, path: Path, where: str, label: str) -> str:
    """A message's content: a string, null (empty), or OpenAI content parts whose text parts are joined."""
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    if isinstance(value, list):
        texts: list[str] = []
        for part in value:
            if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
                texts.append(str(part["text"]))
            else:
                raise DataFormatError(path, where, f"{label}: only text content parts are supported")
        return "".join(texts)
    raise DataFormatError(path, where, f"{label}: content must be a string, got {type(value).__name__}")


def _messages(value: object, path: Path, where: str, key: str) -> list[Message]:
    if not isinstance(value, list) or not value:
        raise DataFormatError(path, where, f"{key!r} must be a non-empty list of messages")
    out: list[Message] = []
    for i, m in enumerate(value):
        label = f"{key}[{i}]"
        if not isinstance(m, dict):
            raise DataFormatError(path, where, f"{label} must be an object with 'role' and 'content'")
        role = m.get("role")
        if not isinstance(role, str) or not role:
            raise DataFormatError(path, where, f"{label}: 'role' must be a non-empty string")
        out.append({"role": role, "content": _content(m.get("content"), path, where, label)})
    return out


def _prompt(value: object, path: Path, where: str) -> list[Message]:
    if isinstance(value, str):
        return [user(value)]
    return _messages(value, path, where, "prompt")


def _response(value: object, path: Path, where: str, key: str) -> list[Message]:
    if isinstance(value, str):
        return [assistant(value.strip())]
    msgs = _messages(value, path, where, key)
    if msgs[-1]["role"] != "assistant":
        raise DataFormatError(path, where, f"{key!r}: the last message must be an assistant message")
    return [{"role": m["role"], "content": m["content"].strip()} for m in msgs]


def _prompt_or_text(value: object, path: Path, where: str, key: str) -> list[Message] | str:
    if isinstance(value, str):
        return value
    return _messages(value, path, where, key)


def _check_pair(chosen: list[Message], rejected: list[Message]) -> None:
    if not completion_text(chosen).strip() or not completion_text(rejected).strip():
        raise SkipRow("empty_response")
    if chosen == rejected:
        raise SkipRow("identical_responses")


# ---------------------------------------------------------------------------------------------------------------
# HH-RLHF transcripts

# A turn marker: "Human:" / "Assistant:" at the very start (after optional whitespace) or after a blank line.
# A marker inside a line ("... drag kings.  Human: Then ...") is left as text, as Anthropic's data does.
_HH_TURN = re.compile(r"(?:\A\s*|\n\n)(Human|Assistant):")
_HH_ROLES = {"Human": "user", "Assistant": "assistant"}


def _hh_split(text: str) -> tuple[list[Message], str]:
    """Split one transcript into (messages before the final Assistant turn, final answer)."""
    turns = list(_HH_TURN.finditer(text))
    if not turns:
        raise SkipRow("not_a_transcript", "no Human:/Assistant: turn markers")
    if text[: turns[0].start()].strip():
        raise SkipRow("text_before_first_turn")
    if turns[-1].group(1) != "Assistant":
        raise SkipRow("last_turn_not_assistant")
    messages: list[Message] = []
    for turn, following in itertools.pairwise(turns):
        role = _HH_ROLES[turn.group(1)]
        content = text[turn.end() : following.start()].strip()
        if messages and messages[-1]["role"] == role:
            # Two turns of one speaker in a row (a glitch in a few HH transcripts): keep them as one message, so
            # roles alternate as most chat templates require.
            messages[-1] = {"role": role, "content": f"{messages[-1]['content']}\n\n{content}".strip()}
        else:
            messages.append({"role": role, "content": content})
    return messages, text[turns[-1].end() :].strip()


def parse_hh_pair(chosen: str, rejected: str) -> PreferenceRecord:
    """One HH-RLHF pair as a conversational preference record.

    The prompt is the conversation before the final ``Assistant:`` turn (earlier turns become user/assistant
    messages; consecutive turns of one speaker are merged); chosen and rejected are that final turn of each
    transcript. Raises :class:`SkipRow` with reason ``not_a_transcript``, ``text_before_first_turn``,
    ``last_turn_not_assistant`` (for either transcript), ``prefix_mismatch`` (the two transcripts differ before
    their final turn), ``empty_prompt``, ``prompt_ends_with_assistant`` (the final Assistant turn follows another
    Assistant turn), ``empty_final_answer`` (either final turn is empty) or ``identical_responses``; the checks
    run in that order and the first that fails names the reason.
    """
    prompt, chosen_answer = _hh_split(chosen)
    rejected_prompt, rejected_answer = _hh_split(rejected)
    if prompt != rejected_prompt:
        raise SkipRow("prefix_mismatch")
    if not prompt:
        raise SkipRow("empty_prompt")
    if prompt[-1]["role"] != "user":
        raise SkipRow("prompt_ends_with_assistant")
    if not chosen_answer or not rejected_answer:
        raise SkipRow("empty_final_answer")
    if chosen_answer == rejected_answer:
        raise SkipRow("identical_responses")
    return {"prompt": prompt, "chosen": [assistant(chosen_answer)], "rejected": [assistant(rejected_answer)]}


def _finish(loaded: Loaded[R]) -> Loaded[R]:
    if loaded.skipped:
        logger.warning("%s", loaded.summary())
    else:
        logger.info("%s", loaded.summary())
    return loaded


def _load(path: PathLike, kind: str, convert: Callable[[dict[str, object], Path, str], R]) -> Loaded[R]:
    """Read every object of ``path`` through ``convert``; :class:`SkipRow` from it is counted, not raised."""
    p = Path(path)
    loaded: Loaded[R] = Loaded(path=p, kind=kind)
    for where, obj in iter_json_records(p):
        loaded.read += 1
        try:
            loaded.rows.append(convert(obj, p, where))
        except SkipRow as skip:
            loaded.skip(skip.reason, where)
    return _finish(loaded)


def _hh_row(obj: dict[str, object], path: Path, where: str) -> PreferenceRecord:
    return parse_hh_pair(_str_field(obj, "chosen", path, where), _str_field(obj, "rejected", path, where))


def load_hh_rlhf(path: PathLike) -> Loaded[PreferenceRecord]:
    """Anthropic HH-RLHF raw transcript pairs ``{chosen, rejected}`` → conversational preference records.

    See :func:`parse_hh_pair` for the parsing and the skip reasons.
    """
    return _load(path, "hh-rlhf", _hh_row)


# ---------------------------------------------------------------------------------------------------------------
# Preference, SFT and KTO rows


def _preference_row(obj: dict[str, object], path: Path, where: str) -> PreferenceRecord:
    if "prompt" in obj:
        prompt = _prompt(obj["prompt"], path, where)
        chosen = _response(_field(obj, "chosen", path, where), path, where, "chosen")
        rejected = _response(_field(obj, "rejected", path, where), path, where, "rejected")
    else:
        # TRL's "implicit prompt" form: two whole conversations; the prompt is their shared leading messages.
        raw_chosen, raw_rejected = _field(obj, "chosen", path, where), _field(obj, "rejected", path, where)
        if isinstance(raw_chosen, str) or isinstance(raw_rejected, str):
            raise DataFormatError(
                path, where, "no 'prompt' and string responses (raw HH-RLHF transcripts? use kind 'hh-rlhf')"
            )
        full_chosen = _messages(raw_chosen, path, where, "chosen")
        full_rejected = _messages(raw_rejected, path, where, "rejected")
        k = 0
        while k < min(len(full_chosen), len(full_rejected)) - 1 and full_chosen[k] == full_rejected[k]:
            k += 1
        if k == 0:
            raise SkipRow("no_shared_prompt")
        prompt = full_chosen[:k]
        chosen = _response(full_chosen[k:], path, where, "chosen")
        rejected = _response(full_rejected[k:], path, where, "rejected")
    _check_pair(chosen, rejected)
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def load_preferences_jsonl(path: PathLike) -> Loaded[PreferenceRecord]:
    """``{prompt, chosen, rejected}`` rows → conversational preference records.

    ``prompt`` is a string or a list of chat messages; ``chosen``/``rejected`` are strings or message lists
    ending with an assistant message. Without ``prompt``, chosen and rejected must be whole conversations (TRL's
    implicit-prompt form) and the prompt is their shared leading messages. This is also the gateway's
    ``preferences`` export. Skips ``empty_response``, ``identical_responses``, ``no_shared_prompt``.
    """
    return _load(path, "preferences", _preference_row)


def _messages_row(obj: dict[str, object], path: Path, where: str) -> PromptCompletionRecord:
    messages = _messages(_field(obj, "messages", path, where), path, where, "messages")
    if messages[-1]["role"] != "assistant":
        raise SkipRow("last_not_assistant")
    if len(messages) == 1:
        raise SkipRow("no_prompt")
    completion = messages[-1]["content"].strip()
    if not completion:
        raise SkipRow("empty_response")
    return {"prompt": messages[:-1], "completion": [assistant(completion)]}


def load_messages_jsonl(path: PathLike) -> Loaded[PromptCompletionRecord]:
    """Conversational SFT rows ``{messages: [...]}`` → prompt-completion records.

    The last message must be the assistant's (it becomes the completion; everything before it the prompt).
    Skips ``last_not_assistant``, ``no_prompt`` (only one message) and ``empty_response``.
    """
    return _load(path, "messages", _messages_row)


def _prompt_completion_row(obj: dict[str, object], path: Path, where: str) -> PromptCompletionRecord:
    prompt = _prompt_or_text(_field(obj, "prompt", path, where), path, where, "prompt")
    completion = _prompt_or_text(_field(obj, "completion", path, where), path, where, "completion")
    if not completion_text(completion).strip():
        raise SkipRow("empty_response")
    return {"prompt": prompt, "completion": completion}


def load_prompt_completion(path: PathLike) -> Loaded[PromptCompletionRecord]:
    """TRL prompt-completion rows (what ``python -m train.data build --kind sft|aligner|rewriter`` writes)."""
    return _load(path, "prompt-completion", _prompt_completion_row)


def _unpaired_row(obj: dict[str, object], path: Path, where: str) -> UnpairedRecord:
    base = _prompt_completion_row(obj, path, where)
    label = _field(obj, "label", path, where)
    if not isinstance(label, bool):
        raise DataFormatError(path, where, f"'label' must be true or false, got {label!r}")
    return {"prompt": base["prompt"], "completion": base["completion"], "label": label}


def load_unpaired(path: PathLike) -> Loaded[UnpairedRecord]:
    """TRL unpaired preference rows ``{prompt, completion, label}`` (what ``build --kind kto`` writes)."""
    return _load(path, "unpaired", _unpaired_row)


# ---------------------------------------------------------------------------------------------------------------
# BPO and Dolly


def _bpo_row(obj: dict[str, object], path: Path, where: str) -> BPORow:
    if "prompt" in obj or "instruction" not in obj:
        prompt = _str_field(obj, "prompt", path, where)
    else:  # BPO's training-data layout: the prompt as instruction + context
        instruction = _str_field(obj, "instruction", path, where)
        prompt = instruction_prompt(instruction, _opt_str_field(obj, "context", path, where) or "")
    optimized = _opt_str_field(obj, "optimized_prompt", path, where)
    good = _opt_str_field(obj, "good_res", path, where)
    bad = _opt_str_field(obj, "bad_res", path, where)
    if optimized is None and (good is None or bad is None):
        raise DataFormatError(path, where, "a BPO row needs 'optimized_prompt' or both 'good_res' and 'bad_res'")
    if not prompt.strip():
        raise SkipRow("empty_prompt")
    row: BPORow = {"prompt": prompt}
    if optimized is not None:
        row["optimized_prompt"] = optimized
    if good is not None:
        row["good_res"] = good
    if bad is not None:
        row["bad_res"] = bad
    return row


def load_bpo(path: PathLike) -> Loaded[BPORow]:
    """BPO rows ``{prompt, optimized_prompt?, good_res?, bad_res?}`` (a JSON array, as BPO ships, or JSONL).

    BPO's training-data rows name the prompt ``instruction`` (+ ``context``, joined as
    :func:`~train.data.formats.instruction_prompt` joins them) instead of ``prompt``.

    Each row needs ``optimized_prompt`` (rewriter training) or ``good_res`` and ``bad_res`` (teacher
    construction), or all three. Skips ``empty_prompt``. The word-ratio filter is not applied here.
    """
    return _load(path, "bpo", _bpo_row)


def _dolly_row(obj: dict[str, object], path: Path, where: str) -> DollyRow:
    instruction = _str_field(obj, "instruction", path, where)
    response = _str_field(obj, "response", path, where)
    context = _opt_str_field(obj, "context", path, where) or ""
    category = _opt_str_field(obj, "category", path, where) or ""
    if not instruction.strip():
        raise SkipRow("empty_instruction")
    return {"instruction": instruction, "context": context, "response": response, "category": category}


def load_dolly(path: PathLike) -> Loaded[DollyRow]:
    """Dolly rows ``{instruction, context?, response, category?}``; extra keys (``idx``) dropped."""
    return _load(path, "dolly", _dolly_row)


# ---------------------------------------------------------------------------------------------------------------
# The gateway's exports (`aligngate data export --kind ...`)


def _aligner_row(obj: dict[str, object], path: Path, where: str) -> AlignerTriplet:
    question = _str_field(obj, "question", path, where)
    answer = _str_field(obj, "answer", path, where)
    correction = _str_field(obj, "correction", path, where)
    if not question.strip() or not answer.strip() or not correction.strip():
        raise SkipRow("empty_field")
    return {"question": question, "answer": answer.strip(), "correction": correction.strip()}


def load_aligner_export(path: PathLike) -> Loaded[AlignerTriplet]:
    """The gateway's ``aligner`` export ``{question, answer, correction}``. Skips ``empty_field``."""
    return _load(path, "aligner", _aligner_row)


def _rewriter_row(obj: dict[str, object], path: Path, where: str) -> RewriterPair:
    prompt = _str_field(obj, "prompt", path, where)
    optimized = _str_field(obj, "optimized_prompt", path, where)
    if not prompt.strip() or not optimized.strip():
        raise SkipRow("empty_field")
    return {"prompt": prompt, "optimized_prompt": optimized.strip()}


def load_rewriter_export(path: PathLike) -> Loaded[RewriterPair]:
    """The gateway's ``rewriter`` export ``{prompt, optimized_prompt}``. Skips ``empty_field``."""
    return _load(path, "rewriter", _rewriter_row)


def load_gateway_export(path: PathLike, kind: ExportKind | str) -> Loaded[Any]:
    """A file written by ``aligngate data export --kind {preferences,aligner,rewriter}``."""
    if kind == "preferences":
        return load_preferences_jsonl(path)
    if kind == "aligner":
        return load_aligner_export(path)
    if kind == "rewriter":
        return load_rewriter_export(path)
    raise ValueError(f"unknown export kind {kind!r}; expected one of {', '.join(EXPORT_KINDS)}")


# ---------------------------------------------------------------------------------------------------------------
# Sniffing

_LOADERS: dict[str, Callable[[PathLike], Loaded[Any]]] = {
    "hh-rlhf": load_hh_rlhf,
    "preferences": load_preferences_jsonl,
    "messages": load_messages_jsonl,
    "prompt-completion": load_prompt_completion,
    "unpaired": load_unpaired,
    "bpo": load_bpo,
    "dolly": load_dolly,
    "aligner": load_aligner_export,
    "rewriter": load_rewriter_export,
}


def sniff_kind(row: dict[str, object]) -> str | None:
    """The kind a row looks like, from its keys (and, for ``{chosen, rejected}``, its values); None if unknown."""
    keys = set(row)
    if "messages" in keys:
        return "messages"
    if {"question", "answer", "correction"} <= keys:
        return "aligner"
    if ("prompt" in keys or "instruction" in keys) and ("good_res" in keys or "bad_res" in keys):
        return "bpo"
    if {"prompt", "optimized_prompt"} <= keys:
        return "rewriter"
    if {"instruction", "response"} <= keys:
        return "dolly"
    if {"chosen", "rejected"} <= keys:
        if "prompt" in keys:
            return "preferences"
        chosen = row["chosen"]
        if isinstance(chosen, str):
            return "hh-rlhf" if _HH_TURN.search(chosen) else None
        return "preferences"
    if {"prompt", "completion", "label"} <= keys:
        return "unpaired"
    if {"prompt", "completion"} <= keys:
        return "prompt-completion"
    return None


def load_any(path: PathLike, kind: str | None = None) -> Loaded[Any]:
    """Load ``path`` as ``kind``, or, when ``kind`` is None, as the kind its first row looks like.

    The result's ``.kind`` says which loader ran. Raises :class:`DataFormatError` for an empty file or a first
    row of no known shape, and ``ValueError`` for an unknown ``kind``.
    """
    if kind is not None:
        if kind not in _LOADERS:
            raise ValueError(f"unknown data kind {kind!r}; expected one of {', '.join(KINDS)}")
        return _LOADERS[kind](path)
    for where, first in iter_json_records(path):
        sniffed = sniff_kind(first)
        if sniffed is None:
            raise DataFormatError(
                path,
                where,
                f"cannot tell the data format from keys {sorted(first)}; pass a kind ({', '.join(KINDS)})",
            )
        return _LOADERS[sniffed](path)
    raise DataFormatError(path, "", "no rows")
