"""The blind judge: verdicts from readers outside aligngate (people, or another model), sides hidden and shuffled.

``judges: [{blind: {pairs: FILE, verdicts: FILE}}]``. Each run writes ``pairs`` afresh (JSONL): one row per pair
that has no verdict yet and whose two answers differ, ``{"pair", "set", "criterion", "prompt", "A", "B"}``, the
prompt as chat messages and the two answers under the neutral labels A and B. Which answer is A is fixed per pair
by its id (a hash of the pair's contents), so half the candidates are A and half B, and a reader cannot tell the
arms apart. Readers append rows ``{"pair": ID, "verdict": "A" | "B" | "tie", "why": "..."}`` to ``verdicts``
(JSONL; ``why`` optional, kept as the judgement's reasoning); the next run maps each verdict back to the
candidate's side (win, lose or tie) and reports it like any judge's, with its interval. Pairs without a verdict
are left unjudged (the run says how many, and they are in ``pairs`` again). A verdict for a pair this run does
not have is ignored; the last verdict given for a pair counts.

The pair id does not depend on the verdicts file, so an id stays valid while verdicts are added; the judge's
cache identity holds the verdicts file's contents, so a changed verdict is read again. A verdicts row that is not
JSON, lacks ``pair``, or says anything but A, B or tie stops the run (:class:`JudgeError`, with its line).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

from gateway.eval.config import BlindJudgeSpec
from gateway.eval.judges import JudgeError, PairItem
from gateway.eval.records import Judgement, Outcome, digest

__all__ = ["BlindJudge", "pair_id"]

logger = logging.getLogger(__name__)

VERDICTS = ("A", "B", "tie")


def pair_id(item: PairItem) -> str:
    """A pair's id for readers: its contents (not the judge's identity), 16 hex digits."""
    return digest(
        {
            "criterion": item.criterion,
            "messages": item.prompt.wire(),
            "arm": item.arm,
            "baseline": item.baseline,
            "candidate": item.candidate,
            "baseline_text": item.baseline_text,
        }
    )[:16]


def candidate_is_a(pid: str) -> bool:
    """Whether the pair shows the candidate's answer as A (half the pairs, fixed by the id)."""
    return int(pid[-1], 16) % 2 == 0


def read_verdicts(body: bytes, where: str) -> dict[str, tuple[str, str | None]]:
    """pair id → (verdict, why) from a verdicts file's bytes (``where``: the file, for messages)."""
    found: dict[str, tuple[str, str | None]] = {}
    for number, line in enumerate(body.decode("utf-8", "replace").splitlines(), 1):
        if not line.strip():
            continue
        at = f"{where}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise JudgeError(f"{at}: not a JSON object") from None
        if not isinstance(row, dict) or not isinstance(row.get("pair"), str):
            raise JudgeError(f'{at}: a verdict is {{"pair": ID, "verdict": "A" | "B" | "tie"}}')
        verdict = row.get("verdict")
        if verdict not in VERDICTS:
            raise JudgeError(f"{at}: verdict must be A, B or tie, not {verdict!r}")
        why = row.get("why")
        found[row["pair"]] = (str(verdict), why if isinstance(why, str) else None)
    return found


class BlindJudge:
    def __init__(self, name: str, spec: BlindJudgeSpec) -> None:
        self.name = name
        self.pairs = Path(spec.pairs).expanduser()
        verdicts = Path(spec.verdicts).expanduser()
        body = verdicts.read_bytes() if verdicts.is_file() else b""
        self._verdicts = read_verdicts(body, f"judge {name}: {verdicts}")
        self.identity = digest({"kind": "blind", "verdicts": hashlib.sha256(body).hexdigest()})

    async def start(self) -> None:
        """Empty the pairs file: a run whose pairs all have verdicts (or are cached) leaves none waiting."""
        self.pairs.parent.mkdir(parents=True, exist_ok=True)
        self.pairs.write_text("", encoding="utf-8")

    async def close(self) -> None:
        """Nothing to close."""

    def _judgement(self, item: PairItem, pid: str, verdict: str, why: str | None) -> Judgement:
        outcome: Outcome = "tie"
        if verdict != "tie":
            outcome = "win" if (verdict == "A") == candidate_is_a(pid) else "lose"
        return item.judgement(self.name, outcome, f"pair {pid}", verdicts=(verdict,), reasoning=(why,) if why else ())

    async def judge_all(self, items: Sequence[PairItem], done: Callable[[Judgement], None]) -> int:
        waiting: list[dict[str, object]] = []
        for item in items:
            pid = pair_id(item)
            found = self._verdicts.get(pid)
            if found is not None:
                done(self._judgement(item, pid, *found))
                continue
            a, b = (item.candidate, item.baseline_text) if candidate_is_a(pid) else (item.baseline_text, item.candidate)
            waiting.append(
                {
                    "pair": pid,
                    "set": item.prompt.set,
                    "criterion": item.criterion,
                    "prompt": item.prompt.wire(),
                    "A": a,
                    "B": b,
                }
            )
        with self.pairs.open("w", encoding="utf-8") as f:
            for row in waiting:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        if waiting:
            logger.info("judge %s: %d pairs wait for a verdict in %s", self.name, len(waiting), self.pairs)
        return len(waiting)
