"""``aligngate eval --from-store URL``: judge what shadow mode stored, before the helper gets an arm.

Pairs come from the trace store, read only (:func:`gateway.report.source.read_store` with ``shadow=True``:
no table is created, SQLite is opened with ``PRAGMA query_only``): for every request that succeeded, has its
messages (text only) and its served answer, and whose shadow run produced a correction, the **candidate** is
the shadow correction (arm ``shadow``) and the **baseline** the answer served (arm ``served``, the
``requests.final_answer``). The prompt set is called ``store``, its prompt ids are the request ids, and its
criterion is ``helpful`` (a judge's ``criterion`` overrides it).

The served answer gets the request's latency; the shadow answer the aligner's milliseconds, and the served
answer as its raw answer, so the measures show how much the shadow aligner changed. Requests left out are
counted by reason (:class:`StorePairs.skipped`): ``failed``, ``no_text`` (stored without bodies),
``non_text_prompt``, ``no_answer``, ``no_shadow_run``, ``shadow_skipped`` (saturated, shutdown, cancelled),
``no_correction`` (a rewrite-only shadow run, or a correction a guard refused).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

from gateway.eval.records import Answer, Message, Prompt
from gateway.report.export import SkipRow, user_conversation
from gateway.report.source import Selection, Snapshot, read

__all__ = ["SERVED", "SET_NAME", "SHADOW", "StorePairs", "pairs_from_snapshot", "read_pairs"]

logger = logging.getLogger(__name__)

SET_NAME = "store"
SHADOW = "shadow"
SERVED = "served"


@dataclass
class StorePairs:
    prompts: list[Prompt] = field(default_factory=list)
    #: (set, request id, arm) → answer, as :mod:`gateway.eval.runner` keys them.
    answers: dict[tuple[str, str, str], Answer] = field(default_factory=dict)
    skipped: Counter[str] = field(default_factory=Counter)


def pairs_from_snapshot(snapshot: Snapshot) -> StorePairs:
    """The (served, shadow) pairs of ``snapshot`` (read with bodies and shadow runs)."""
    pairs = StorePairs()
    for rec in snapshot.requests:
        run = snapshot.shadow.get(rec.id)
        if run is None:
            pairs.skipped["no_shadow_run"] += 1
            continue
        if not rec.ok:
            pairs.skipped["failed"] += 1
            continue
        try:
            messages = tuple(Message(m["role"], m["content"]) for m in user_conversation(rec))
        except SkipRow as exc:
            pairs.skipped[exc.reason] += 1
            continue
        if not rec.final_answer:
            pairs.skipped["no_answer"] += 1
            continue
        if run.skipped is not None:
            pairs.skipped["shadow_skipped"] += 1
            continue
        if not run.corrected:
            pairs.skipped["no_correction"] += 1
            continue
        prompt = Prompt(SET_NAME, rec.id, messages, "helpful")
        pairs.prompts.append(prompt)
        pairs.answers[(SET_NAME, rec.id, SERVED)] = Answer(
            key=f"store:{rec.id}:{SERVED}",
            set=SET_NAME,
            prompt_id=rec.id,
            arm=SERVED,
            text=rec.final_answer,
            latency_ms=rec.latency_ms,
        )
        pairs.answers[(SET_NAME, rec.id, SHADOW)] = Answer(
            key=f"store:{rec.id}:{SHADOW}",
            set=SET_NAME,
            prompt_id=rec.id,
            arm=SHADOW,
            text=run.corrected,
            latency_ms=run.aligner_ms or 0.0,
            raw=rec.final_answer,
            rewritten_prompt=run.rewritten_prompt,
            rewriter_skipped=run.rewriter_skipped,
            aligner_skipped=run.aligner_skipped,
            rewriter_ms=run.rewriter_ms,
            aligner_ms=run.aligner_ms,
        )
    return pairs


def read_pairs(url: str, experiment: str | None = None, timeout_s: float = 5.0) -> StorePairs:
    """Read the store at ``url`` (raises :class:`gateway.report.source.StoreError`) and build its pairs."""
    snapshot = read(url, Selection(experiment, None, True), bodies=True, timeout_s=timeout_s, shadow=True)
    pairs = pairs_from_snapshot(snapshot)
    logger.info("store %s: %d pairs; left out: %s", snapshot.url, len(pairs.prompts), dict(pairs.skipped))
    return pairs
