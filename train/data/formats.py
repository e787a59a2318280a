"""Typed records for the dataset formats this package emits, and the JSON/JSONL files they live in.

The TRL formats (plain dicts, which is what ``datasets.Dataset.from_list`` and TRL's trainers take):

* conversational **preference** (DPO, IPO, reward modelling)::

      {"prompt": [{"role": "user", "content": ...}, ...],
       "chosen": [{"role": "assistant", "content": ...}],
       "rejected": [{"role": "assistant", "content": ...}]}

* **prompt-completion** (SFT), conversational or standard (plain strings)::

      {"prompt": [messages] | str, "completion": [messages] | str}

* **unpaired preference** (KTO)::

      {"prompt": [messages] | str, "completion": [messages] | str, "label": bool}

Intermediate records that are not TRL formats but are what the helpers learn from:

* Aligner triplets ``{"question", "answer", "correction"}`` (also the gateway's ``aligner`` export),
* rewriter pairs ``{"prompt", "optimized_prompt"}`` (also the gateway's ``rewriter`` export),
* BPO rows ``{"prompt", "optimized_prompt"?, "good_res"?, "bad_res"?}`` and Dolly rows.

Files: ``.jsonl`` (one JSON object per line; blank lines ignored) or a ``.json`` array of objects, sniffed from
the first non-blank character. Every read error names the file and the line (JSONL) or item (JSON array).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import NotRequired, TypedDict


class DataFormatError(ValueError):
    """Malformed input data; the message starts with ``<file>:<line N|item N>:``."""

    def __init__(self, path: str | os.PathLike[str], where: str, message: str) -> None:
        self.path = str(path)
        self.where = where
        super().__init__(f"{self.path}:{where}: {message}" if where else f"{self.path}: {message}")


class Message(TypedDict):
    """One chat message, as in the OpenAI wire format and TRL's conversational formats."""

    role: str
    content: str


class PreferenceRecord(TypedDict):
    """TRL conversational preference row: a shared prompt and two alternative assistant turns."""

    prompt: list[Message]
    chosen: list[Message]
    rejected: list[Message]


class PromptCompletionRecord(TypedDict):
    """TRL prompt-completion row (SFT): conversational (message lists) or standard (strings)."""

    prompt: list[Message] | str
    completion: list[Message] | str


class UnpairedRecord(TypedDict):
    """TRL unpaired preference row (KTO): one completion and whether it is desirable."""

    prompt: list[Message] | str
    completion: list[Message] | str
    label: bool


class AlignerTriplet(TypedDict):
    """Aligner training example: correct ``answer`` to ``question`` into ``correction``."""

    question: str
    answer: str
    correction: str


class RewriterPair(TypedDict):
    """BPO-style rewriter training example: ``prompt`` rewritten as ``optimized_prompt``."""

    prompt: str
    optimized_prompt: str


class BPORow(TypedDict):
    """A row of the BPO data: the prompt, its optimised form and/or a good and a bad response to it."""

    prompt: str
    optimized_prompt: NotRequired[str]
    good_res: NotRequired[str]
    bad_res: NotRequired[str]


class DollyRow(TypedDict):
    """A Dolly evaluation instruction (``context`` is empty when the instruction stands alone)."""

    instruction: str
    context: str
    response: str
    category: str


# Speaker names used when a conversation is flattened to text (HH-RLHF style). Deliberately not the upper-case
# ``USER:``/``ASSISTANT:`` of the Aligner template, so a flattened question cannot be mistaken for its markers.
SPEAKERS: dict[str, str] = {"system": "System", "user": "Human", "assistant": "Assistant"}


def instruction_prompt(instruction: str, context: str) -> str:
    """The prompt an instruction row stands for: BPO's ``{instruction}\\n{context}`` layout (context when present)."""
    if context.strip():
        return f"{instruction}\n{context}".strip()
    return instruction.strip()


def user(content: str) -> Message:
    """A user message."""
    return {"role": "user", "content": content}


def assistant(content: str) -> Message:
    """An assistant message."""
    return {"role": "assistant", "content": content}


def completion_text(completion: list[Message] | str) -> str:
    """The text of a completion: the string itself, or the contents of its messages joined by blank lines."""
    if isinstance(completion, str):
        return completion
    return "\n\n".join(m["content"] for m in completion)


def render_conversation(prompt: list[Message] | str) -> str:
    """Flatten a prompt to the text a text-only helper sees (the Aligner ``question``, the BPO ``prompt``).

    A string, or a conversation of exactly one user message, is returned as it is. Anything longer becomes an
    HH-style transcript: ``"Human: ...\\n\\nAssistant: ...\\n\\nHuman: ..."`` (``System:`` for system messages;
    other roles keep their own name, capitalised). The gateway should flatten chat requests the same way, so
    that what the helpers were trained on is what they see.
    """
    if isinstance(prompt, str):
        return prompt
    if len(prompt) == 1 and prompt[0]["role"] == "user":
        return prompt[0]["content"]
    return "\n\n".join(f"{SPEAKERS.get(m['role'], m['role'].capitalize())}: {m['content']}" for m in prompt)


def _is_json_array(path: Path) -> bool:
    with path.open("r", encoding="utf-8-sig") as f:
        while chunk := f.read(4096):
            stripped = chunk.lstrip()
            if stripped:
                return stripped[0] == "["
    return False


def iter_json_records(path: str | os.PathLike[str]) -> Iterator[tuple[str, dict[str, object]]]:
    """Yield ``(where, obj)`` for each object of a JSONL file or JSON array; ``where`` is ``"line N"``/``"item N"``.

    Raises :class:`DataFormatError` (naming the file and the line or item) for invalid JSON or a non-object row,
    and ``FileNotFoundError`` for a missing file.
    """
    p = Path(path)
    if _is_json_array(p):
        try:
            with p.open("r", encoding="utf-8-sig") as f:
                data = json.load(f)
        except json.JSONDecodeError as exc:
            raise DataFormatError(p, f"line {exc.lineno}", f"invalid JSON: {exc.msg}") from exc
        if not isinstance(data, list):
            raise DataFormatError(p, "", "expected a JSON array of objects")
        for i, item in enumerate(data, start=1):
            if not isinstance(item, dict):
                raise DataFormatError(p, f"item {i}", f"expected a JSON object, got {type(item).__name__}")
            yield f"item {i}", item
        return
    with p.open("r", encoding="utf-8-sig") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataFormatError(p, f"line {lineno}", f"invalid JSON: {exc.msg} (column {exc.colno})") from exc
            if not isinstance(obj, dict):
                raise DataFormatError(p, f"line {lineno}", f"expected a JSON object, got {type(obj).__name__}")
            yield f"line {lineno}", obj


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, object]]:
    """All objects of a JSONL file (or JSON array), unvalidated."""
    return [obj for _, obj in iter_json_records(path)]


def write_jsonl(path: str | os.PathLike[str], rows: Iterable[Mapping[str, object]]) -> int:
    """Write rows as UTF-8 JSONL (non-ASCII kept as is), atomically; create parent folders. Returns the count."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    n = 0
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False))
                f.write("\n")
                n += 1
        os.chmod(tmp, 0o644)
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return n
