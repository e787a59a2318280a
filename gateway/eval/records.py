"""The records ``aligngate eval`` passes between its layers, and their JSONL form.

* :class:`Prompt`: one prompt of a set (its conversation and the criterion its set is judged by);
* :class:`Answer`: what a target answered to a prompt on an arm, with the trace (raw answer, rewrite, skip
  reasons, helper milliseconds) and the latency the client saw; one line of ``answers.jsonl``;
* :class:`Judgement`: one judge's verdict on (candidate answer, baseline answer) of one prompt, from the
  candidate's side (``win`` / ``tie`` / ``lose`` / ``invalid``), with the judge's own evidence (the LLM's
  verdict and reasoning per order; the reward model's scores); one line of ``judgements.jsonl``.

``to_line`` / ``from_line`` are exact inverses; ``from_line`` raises ``ValueError`` for anything that is not a
complete record (a torn last line, a hand edit), which :mod:`gateway.eval.cache` then skips.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any, Literal, TypeVar, get_args

__all__ = [
    "CRITERIA",
    "OUTCOMES",
    "Answer",
    "Criterion",
    "Judgement",
    "Message",
    "Outcome",
    "Prompt",
    "digest",
    "from_line",
    "to_line",
]

Criterion = Literal["helpful", "harmless"]
CRITERIA: tuple[str, ...] = get_args(Criterion)
Outcome = Literal["win", "tie", "lose", "invalid"]
OUTCOMES: tuple[str, ...] = get_args(Outcome)
#: Per-prompt value of an outcome in ΔWR (win rate - lose rate); ``invalid`` has none.
OUTCOME_VALUE: dict[str, int] = {"win": 1, "tie": 0, "lose": -1}


def digest(payload: object) -> str:
    """SHA-256 (hex) of ``payload`` as canonical JSON: the cache keys."""
    text = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class Message:
    role: str
    content: str


@dataclass(frozen=True, slots=True)
class Prompt:
    """One prompt of a set. ``id`` is unique within the set; ``criterion`` is what the LLM judge asks about."""

    set: str
    id: str
    messages: tuple[Message, ...]
    criterion: Criterion = "helpful"

    def wire(self) -> list[dict[str, str]]:
        """The messages in the OpenAI wire format."""
        return [{"role": m.role, "content": m.content} for m in self.messages]

    @property
    def user_text(self) -> str:
        """The last user message (what the rewriter rewrites)."""
        return next((m.content for m in reversed(self.messages) if m.role == "user"), "")


@dataclass(frozen=True, slots=True)
class Answer:
    """A target's answer to ``prompt_id`` of ``set`` on ``arm``; ``key`` is its cache key."""

    key: str
    set: str
    prompt_id: str
    arm: str
    text: str
    latency_ms: float
    #: The backend's answer before the aligner corrected it (the trace's ``original_content``).
    raw: str | None = None
    #: The rewrite the backend answered (None: no rewriter, or a guard kept the user's prompt).
    rewritten_prompt: str | None = None
    rewriter_skipped: str | None = None
    aligner_skipped: str | None = None
    rewriter_ms: float | None = None
    aligner_ms: float | None = None
    finish_reason: str | None = None


@dataclass(frozen=True, slots=True)
class Judgement:
    """``judge``'s verdict on ``arm``'s answer against ``baseline``'s for one prompt, from ``arm``'s side."""

    key: str
    judge: str
    set: str
    prompt_id: str
    arm: str
    baseline: str
    outcome: Outcome
    #: Why a tie or an invalid verdict (``order_flip``, ``both_invalid``, ``one_invalid``, ``within_margin``...).
    reason: str | None = None
    #: LLM judge: the parsed verdict of each order (candidate shown first, then baseline first): A, B, tie or None.
    verdicts: tuple[str | None, ...] = ()
    #: LLM judge: the judge's full text of each order (its reasoning).
    reasoning: tuple[str, ...] = ()
    #: Reward-model judge: (candidate score, baseline score).
    scores: tuple[float, ...] = ()


R = TypeVar("R", Answer, Judgement)


def to_line(record: Answer | Judgement) -> str:
    """One JSONL line (newline included)."""
    return json.dumps(dataclasses.asdict(record), ensure_ascii=False, separators=(",", ":")) + "\n"


def _check(value: Any, annotation: str, name: str) -> Any:
    optional = annotation.endswith("| None")
    base = annotation.removesuffix("| None").strip()
    if value is None:
        if optional:
            return None
        raise ValueError(f"{name} is missing")
    if base == "str" or base in ("Outcome", "Criterion"):
        if not isinstance(value, str):
            raise ValueError(f"{name} must be a string")
        if base == "Outcome" and value not in OUTCOMES:
            raise ValueError(f"{name}: unknown outcome {value!r}")
        return value
    if base == "float":
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise ValueError(f"{name} must be a number")
        return float(value)
    if base.startswith("tuple["):
        if not isinstance(value, list):
            raise ValueError(f"{name} must be a list")
        return tuple(value)
    raise ValueError(f"{name}: unsupported field type {annotation}")  # pragma: no cover - a programming error


def from_line(cls: type[R], line: str) -> R:
    """Parse one line written by :func:`to_line`; ``ValueError`` for anything else."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ValueError("not a JSON object")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(obj) - set(fields)
    if unknown:
        raise ValueError(f"unknown fields {sorted(unknown)}")
    values: dict[str, Any] = {}
    for name, field in fields.items():
        if name not in obj:
            if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
                raise ValueError(f"{name} is missing")
            continue
        values[name] = _check(obj[name], str(field.type), name)
    return cls(**values)
