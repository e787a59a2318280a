"""``aligngate data export``: training data for ``train/`` from the trace store's requests and feedback.

Each kind is JSONL that :func:`train.data.loaders.load_gateway_export` (and ``load_any``) reads. Rows come in
the order of their requests (request time, then id; the two rules of one request in the order below), then the
pairwise rows in the order of their preferences (time, then id). Every request of the selection counts
(forced-arm requests too: randomisation does not matter for training data). Every row carries ``source``: the
rule that made it (``correction``, ``upvoted_alignment``, ``pairwise``, ``upvoted_rewrite``).
Feedback is reduced per request as everywhere else: the **latest** rating counts, and "the correction" is the
latest non-empty correction the request was given.

**preferences** ``{prompt, chosen, rejected, request_id, source}`` (TRL's conversational preference format:
``prompt`` is the user's own conversation, the request's ``messages`` as the client sent them, as
``[{role, content}]`` with text content, never the rewritten prompt; ``chosen`` and ``rejected`` are one
assistant message each):

* ``correction`` — rule (a): a request with a user correction. The correction beats the answer shown (the
  final answer, after any alignment).
* ``upvoted_alignment`` — rule (b): a request the aligner ran on (an aligning arm), whose latest rating is +1,
  and whose final answer differs from the backend's raw answer. The user approved the corrected answer, so the
  correction (final) beats the raw answer.
* ``pairwise`` — rule (c): a pairwise preference (``POST /v1/preferences``) between two requests of the selection
  that got the same conversation: the preferred request's final answer beats the other's. The row also carries
  ``rejected_request_id`` and ``preference_id`` (``request_id`` is the preferred request). Ties say neither is
  better and are skipped (``tie``); so is a pair whose other request is not in the selection (``not_selected``:
  another experiment, or before ``--since``), whose conversations differ (``different_prompts``), or whose two
  answers are the same text (``identical``); each preference is a row of its own (no latest-counts reduction).
* A request can give a row of each rule (an up-rated aligned answer the user still corrected: correction >
  final > raw, two consistent pairs).
* Not exported, on purpose: a **down-rated** answer without a correction says that what the user saw was bad,
  not what a better answer would be, so it has no ``chosen``. In particular a down-rated *aligned* answer whose
  raw answer differs does **not** make "raw beats final": the user never saw the raw answer, which may be as
  bad or worse, and such a pair would train against the corrector on no evidence. These requests are counted
  as "not used" in the summary.

**aligner** ``{question, answer, correction, request_id, source}`` (the Aligner's triplets; ``question`` is the
user's conversation rendered by :func:`models.aligner.question_from_messages`, as the gateway's aligner sees
it): from rule (a), ``answer`` = the answer shown and ``correction`` = the user's correction; from rule (b),
``answer`` = the raw answer and ``correction`` = the final (aligned, up-rated) answer. Same sources, same
exclusions.

**rewriter** ``{prompt, optimized_prompt, request_id, source}``: rule ``upvoted_rewrite`` — a request whose rewrite
was used (``rewritten_prompt`` stored: no guard kept the original) and whose latest rating is +1; ``prompt``
is the text of the original last user message, ``optimized_prompt`` the rewrite. Down-rated rewrites are not
used (the rating judges the answer, and a bad answer does not say what the better prompt was).

**Skipped** (counted per rule and reason, printed by the CLI): ``failed`` (status >= 400 or a response that
failed after it started: its answer may be cut off), ``no_text`` (the row has no text: ``store.log_bodies``
was off), ``non_text_prompt`` (images, tool calls, or a completions prompt that is not a string),
``no_user_message``, ``no_answer`` (an answer without text), ``identical`` (the correction or rewrite equals
what it would replace, or the two compared answers are the same), ``unchanged`` (rule (b): the aligner kept the
raw answer), ``not_rewritten`` (a guard or a failure kept the original prompt), and for rule (c) ``tie``,
``not_selected``, ``different_prompts``. For a pair, ``failed``, ``no_text`` and the like mean either request.
"""

from __future__ import annotations

import os
import tempfile
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import orjson

from gateway.config import ARMS, Arm
from gateway.report import EXPORT_KINDS
from gateway.report.source import FeedbackSummary, PreferenceRecord, RequestRecord, Selection, read
from models.aligner import question_from_messages
from models.wire.read import content_text

__all__ = [
    "EXPORT_KINDS",
    "PAIRWISE",
    "RULES",
    "ExportKind",
    "ExportResult",
    "RuleCount",
    "SkipRow",
    "build_rows",
    "export",
    "user_conversation",
    "write_jsonl",
]

ExportKind = Literal["preferences", "aligner", "rewriter"]

CORRECTION = "correction"
UPVOTED_ALIGNMENT = "upvoted_alignment"
UPVOTED_REWRITE = "upvoted_rewrite"
PAIRWISE = "pairwise"
#: The rules of each kind, in the order they are applied to a request (``pairwise``: to each preference).
RULES: dict[str, tuple[str, ...]] = {
    "preferences": (CORRECTION, UPVOTED_ALIGNMENT, PAIRWISE),
    "aligner": (CORRECTION, UPVOTED_ALIGNMENT),
    "rewriter": (UPVOTED_REWRITE,),
}

Row = dict[str, Any]
Message = dict[str, str]


class SkipRow(Exception):
    """A request that yields no row; ``reason`` says why (counted per reason)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(slots=True)
class RuleCount:
    written: int = 0
    skipped: Counter[str] = field(default_factory=Counter)


@dataclass(slots=True)
class ExportResult:
    """The rows of one export, what each rule wrote and skipped (by reason), and what was left unused."""

    kind: str
    rows: list[Row] = field(default_factory=list)
    rules: dict[str, RuleCount] = field(default_factory=dict)
    #: Rated requests no rule applies to, by why (informational: see the module docstring).
    not_used: Counter[str] = field(default_factory=Counter)

    def summary(self, path: Path | str | None = None) -> str:
        """Lines for the user: rows written, then per rule written/skipped, then what was not used."""
        where = f" to {path}" if path is not None else ""
        lines = [f"exported {len(self.rows)} {self.kind} rows{where}"]
        for rule, count in self.rules.items():
            line = f"  {rule}: {count.written} written"
            if count.skipped:
                reasons = ", ".join(f"{r} {n}" for r, n in sorted(count.skipped.items()))
                line += f"; skipped {sum(count.skipped.values())} ({reasons})"
            lines.append(line)
        for reason, n in sorted(self.not_used.items()):
            lines.append(f"  not used: {n} {reason}")
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ row parts


def _runs(rec: RequestRecord, helper: str) -> bool:
    """Whether ``helper`` ran on this request (its arm has it, or it took time)."""
    took = rec.rewriter_ms if helper == "rewriter" else rec.aligner_ms
    return helper in (Arm(rec.arm).helpers if rec.arm in ARMS else ()) or took is not None


def user_conversation(rec: RequestRecord) -> list[Message]:
    """The user's own conversation as ``[{role, content}]`` with text content (text parts joined); raises
    ``SkipRow`` (``no_text``, ``non_text_prompt``, ``no_user_message``). Shared with ``aligngate eval --from-store``."""
    messages = rec.messages
    if messages is None:
        raise SkipRow("no_text")
    if not isinstance(messages, list) or not messages:
        raise SkipRow("non_text_prompt")
    out: list[Message] = []
    for m in messages:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not m["role"]:
            raise SkipRow("non_text_prompt")
        if m.get("tool_calls") or m.get("function_call"):
            raise SkipRow("non_text_prompt")
        content = m.get("content")
        if isinstance(content, list) and all(
            isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content
        ):
            content = content_text(content)
        if not isinstance(content, str):
            raise SkipRow("non_text_prompt")
        out.append({"role": m["role"], "content": content})
    if not _last_user_text(out).strip():
        raise SkipRow("no_user_message")
    return out


def _last_user_text(messages: Sequence[Message]) -> str:
    return next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")


def _text(value: str | None) -> str:
    if value is None or not value.strip():
        raise SkipRow("no_answer")
    return value


def _check_ok(rec: RequestRecord) -> None:
    if not rec.ok:
        raise SkipRow("failed")


def _same(a: str, b: str) -> bool:
    return a.strip() == b.strip()


# ------------------------------------------------------------------------------------------------ the rules


Pair = tuple[list[Message], str, str]  # (the user's conversation, the better answer, the worse answer)


def _pair_correction(rec: RequestRecord, fb: FeedbackSummary) -> Pair:
    """Rule (a): the user's correction is better than the answer shown (the final answer)."""
    _check_ok(rec)
    conversation = user_conversation(rec)
    shown = _text(rec.final_answer)
    correction = fb.correction or ""
    if _same(correction, shown):
        raise SkipRow("identical")
    return conversation, correction, shown


def _pair_upvoted(rec: RequestRecord, fb: FeedbackSummary) -> Pair:
    """Rule (b): an up-rated aligned answer (final) is better than the backend's raw answer."""
    _check_ok(rec)
    conversation = user_conversation(rec)
    final, raw = _text(rec.final_answer), _text(rec.raw_answer)
    if _same(final, raw):
        raise SkipRow("unchanged")
    return conversation, final, raw


def _preference(pair: Pair, rid: str, source: str) -> Row:
    conversation, better, worse = pair
    return {
        "prompt": conversation,
        "chosen": [{"role": "assistant", "content": better}],
        "rejected": [{"role": "assistant", "content": worse}],
        "request_id": rid,
        "source": source,
    }


def _triplet(pair: Pair, rid: str, source: str) -> Row:
    conversation, better, worse = pair
    return {
        "question": question_from_messages(conversation),
        "answer": worse,
        "correction": better,
        "request_id": rid,
        "source": source,
    }


def _rewriter_pair(rec: RequestRecord, fb: FeedbackSummary) -> Row:
    """The up-rated rewrite: the original last user message and the rewrite that replaced it."""
    _check_ok(rec)
    original = _last_user_text(user_conversation(rec))
    rewritten = rec.rewritten_prompt
    if rewritten is None or not rewritten.strip():
        raise SkipRow("not_rewritten")
    if _same(rewritten, original):
        raise SkipRow("identical")
    return {"prompt": original, "optimized_prompt": rewritten, "request_id": rec.id, "source": UPVOTED_REWRITE}


def _pairwise(pref: PreferenceRecord, by_id: Mapping[str, RequestRecord]) -> Row:
    """Rule (c): the preferred request's final answer beats the other's, given the same conversation."""
    if pref.preferred not in ("a", "b"):
        raise SkipRow("tie")
    rec_a, rec_b = by_id.get(pref.request_a), by_id.get(pref.request_b)
    if rec_a is None or rec_b is None:
        raise SkipRow("not_selected")
    chosen, rejected = (rec_a, rec_b) if pref.preferred == "a" else (rec_b, rec_a)
    _check_ok(chosen)
    _check_ok(rejected)
    conversation = user_conversation(chosen)
    if user_conversation(rejected) != conversation:
        raise SkipRow("different_prompts")
    better, worse = _text(chosen.final_answer), _text(rejected.final_answer)
    if _same(better, worse):
        raise SkipRow("identical")
    row = _preference((conversation, better, worse), chosen.id, PAIRWISE)
    row["rejected_request_id"] = rejected.id
    row["preference_id"] = pref.id
    return row


def build_rows(
    kind: str, requests: Sequence[RequestRecord], feedback: Mapping[str, FeedbackSummary],
    preferences: Sequence[PreferenceRecord] = (),
) -> ExportResult:
    """The rows of ``kind`` from ``requests`` (in the order given) and their feedback summaries, then (kind
    ``preferences``) from the pairwise ``preferences`` between them (in the order given)."""
    if kind not in RULES:
        raise ValueError(f"unknown export kind {kind!r}; expected one of {', '.join(EXPORT_KINDS)}")
    result = ExportResult(kind, rules={rule: RuleCount() for rule in RULES[kind]})
    shape = _preference if kind == "preferences" else _triplet

    def attempt(rule: str, rec: RequestRecord, fb: FeedbackSummary) -> None:
        count = result.rules[rule]
        try:
            if rule == UPVOTED_REWRITE:
                row = _rewriter_pair(rec, fb)
            else:
                row = shape((_pair_correction if rule == CORRECTION else _pair_upvoted)(rec, fb), rec.id, rule)
        except SkipRow as skip:
            count.skipped[skip.reason] += 1
            return
        result.rows.append(row)
        count.written += 1

    for rec in requests:
        fb = feedback.get(rec.id)
        if fb is None:
            continue
        if kind == "rewriter":
            if not _runs(rec, "rewriter"):
                continue
            if fb.rating == 1:
                attempt(UPVOTED_REWRITE, rec, fb)
            else:
                result.not_used["down-rated rewrites"] += 1
            continue
        if fb.correction is not None:
            attempt(CORRECTION, rec, fb)
        elif fb.rating != 1:
            result.not_used["down-rated answers without a correction"] += 1
        if fb.rating == 1 and _runs(rec, "aligner"):
            attempt(UPVOTED_ALIGNMENT, rec, fb)
    if kind == "preferences":
        by_id = {rec.id: rec for rec in requests}
        count = result.rules[PAIRWISE]
        for pref in preferences:
            try:
                row = _pairwise(pref, by_id)
            except SkipRow as skip:
                count.skipped[skip.reason] += 1
                continue
            result.rows.append(row)
            count.written += 1
    return result


# ------------------------------------------------------------------------------------------------ files


def write_jsonl(path: Path, rows: Sequence[Row]) -> None:
    """Write ``rows`` as UTF-8 JSON lines, atomically (a temporary file renamed over ``path``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            for row in rows:
                fh.write(orjson.dumps(row) + b"\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def export(
    url: str, kind: str, out: Path, selection: Selection | None = None, *, timeout_s: float = 5.0
) -> ExportResult:
    """Read the store at ``url`` (read only), build the ``kind`` rows and write them to ``out``.

    Raises :class:`~gateway.report.source.StoreError` when the store cannot be read, ``OSError`` when ``out``
    cannot be written.
    """
    if kind not in RULES:
        raise ValueError(f"unknown export kind {kind!r}; expected one of {', '.join(EXPORT_KINDS)}")
    snapshot = read(url, selection or Selection(), bodies=True, timeout_s=timeout_s)
    result = build_rows(kind, snapshot.requests, snapshot.feedback, snapshot.preferences)
    write_jsonl(out, result.rows)
    return result
