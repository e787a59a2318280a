"""What every judge is: the :class:`Judge` protocol, the :class:`PairItem` it judges, and building judges.

A judge compares two answers to one prompt — the candidate arm's and the baseline's — and says, from the
candidate's side, ``win``, ``tie``, ``lose`` or ``invalid`` (a :class:`gateway.eval.records.Judgement`).
``identity`` is part of each judgement's cache key (what the judge is: endpoint and model and prompt version,
or the reward model's files and settings). ``judge_all`` hands each judgement to ``done`` as soon as it has it
(the runner appends it to ``judgements.jsonl`` at once), and returns how many items it could not judge (a
server error or timeout after retries: not cached, retried next run). :class:`JudgeError` means the judge
cannot be used at all (unreachable, a refused key or model, a reward model that does not load).

The judges: :mod:`gateway.eval.rm_judge` (a reward model; imports torch only when it is built),
:mod:`gateway.eval.llm_judge` (an OpenAI-compatible chat model) and :mod:`gateway.eval.blind_judge` (verdicts
from readers outside aligngate, sides hidden).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from gateway.eval.config import JudgeSpec, judge_name
from gateway.eval.records import Judgement, Outcome, Prompt

__all__ = ["Judge", "JudgeError", "PairItem", "build_judge"]


class JudgeError(Exception):
    """The judge cannot be used: the run stops (its message is one line)."""


@dataclass(frozen=True, slots=True)
class PairItem:
    """One comparison: ``arm``'s answer (``candidate``) against ``baseline``'s, for ``prompt``."""

    key: str
    prompt: Prompt
    arm: str
    baseline: str
    candidate: str
    baseline_text: str
    criterion: str

    def judgement(self, judge: str, outcome: Outcome, reason: str | None = None, **details: Any) -> Judgement:
        """``judge``'s verdict on this pair (``details``: ``verdicts``, ``reasoning``, ``scores``)."""
        p = self.prompt
        return Judgement(self.key, judge, p.set, p.id, self.arm, self.baseline, outcome, reason, **details)


class Judge(Protocol):
    name: str
    identity: str

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def judge_all(self, items: Sequence[PairItem], done: Callable[[Judgement], None]) -> int: ...


def build_judge(spec: JudgeSpec, concurrency: int) -> Judge:
    """The judge ``spec`` describes (not started)."""
    name = judge_name(spec)
    if spec.llm is not None:
        from gateway.eval.llm_judge import LLMJudge

        return LLMJudge(name, spec.llm, concurrency)
    if spec.blind is not None:
        from gateway.eval.blind_judge import BlindJudge

        return BlindJudge(name, spec.blind)
    assert spec.reward_model is not None
    from gateway.eval.rm_judge import RMJudge

    return RMJudge(name, spec)
