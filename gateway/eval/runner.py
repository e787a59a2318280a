"""Generation and judging: every (prompt, arm) answered once, every (prompt, arm vs baseline, judge) judged once.

* **Cache keys.** An answer's key is a digest of the target's identity for the arm (:mod:`gateway.eval.targets`),
  the arm it is answered on (``X-Aligngate-Arm``), the generation settings (temperature, max_tokens, seed) and
  the prompt's messages; a judgement's key a digest of the judge's identity, the criterion, the prompt, the arm
  and baseline names and both answers' texts. A change to any of them invalidates exactly the records that
  depend on it; nothing else is regenerated.
* **Resume.** Answers and judgements found under their key in the output folder are reused; only the missing
  ones are made. Each new record is appended to its file the moment it exists, so a run stopped at any point
  (Ctrl-C included) loses nothing made so far.
* **Target start only when needed.** When every answer is cached the target is not started at all (no model is
  loaded, no gateway needs to be up).
* **Concurrency.** At most ``concurrency`` answers are requested at once; the LLM judge bounds its own calls
  the same way.
* **Identical answers.** When the candidate's answer is the baseline's, character for character, the pair is a
  tie without asking a judge (reason ``identical``).
* **Failures.** A :class:`~gateway.eval.targets.TargetError` or :class:`~gateway.eval.judges.JudgeError` stops
  the run (what was made is kept); a failed answer or an unjudged pair is counted, left out, and retried by the
  next run.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TextIO

from gateway.eval.cache import RecordFile
from gateway.eval.config import GenerationSpec
from gateway.eval.judges import Judge, PairItem
from gateway.eval.progress import Progress
from gateway.eval.records import Answer, Judgement, Prompt, digest
from gateway.eval.targets import AnswerFailed, Target

__all__ = ["GenerationResult", "JudgingResult", "answer_key", "generate", "judge", "pair_items"]

logger = logging.getLogger(__name__)


def answer_key(identity: str, arm: str, generation: GenerationSpec, prompt: Prompt) -> str:
    return digest(
        {"target": identity, "arm": arm, "generation": dataclasses.asdict(generation), "messages": prompt.wire()}
    )


def _as_arm(answer: Answer, arm: str) -> Answer:
    """A cached answer under the arm this run calls it (a two-sided run reuses a plain run's ``align`` answers as
    its ``candidate``)."""
    return answer if answer.arm == arm else dataclasses.replace(answer, arm=arm)


@dataclass
class GenerationResult:
    #: (set, prompt id, arm) → the answer used (cached or new).
    answers: dict[tuple[str, str, str], Answer] = field(default_factory=dict)
    generated: int = 0
    reused: int = 0
    #: (set, arm) → answers that failed this run.
    failed: Counter[tuple[str, str]] = field(default_factory=Counter)


async def generate(
    target: Target,
    prompts: Sequence[Prompt],
    arms: Sequence[str],
    generation: GenerationSpec,
    cache: RecordFile[Answer],
    concurrency: int,
    stream: TextIO | None = None,
) -> GenerationResult:
    """Every prompt on every arm: from ``cache`` where it is there, else from ``target`` (started if needed)."""
    result = GenerationResult()
    todo: list[tuple[Prompt, str, str | None]] = []
    for prompt in prompts:
        for arm in arms:
            identity = target.identity_of(arm)
            key = answer_key(identity, target.answer_arm(arm), generation, prompt) if identity else None
            cached = cache.get(key) if key is not None else None
            if cached is not None:
                result.answers[(prompt.set, prompt.id, arm)] = _as_arm(cached, arm)
                result.reused += 1
            else:
                todo.append((prompt, arm, key))
    if not todo:
        logger.info("all %d answers cached; target not started", result.reused)
        return result
    async with target:
        progress = Progress("answers", len(todo) + result.reused, stream)
        if result.reused:
            progress.advance(result.reused, "cached")
        slots = asyncio.Semaphore(concurrency)

        async def one(prompt: Prompt, arm: str, key: str | None) -> None:
            if key is None:  # the identity was only known once the target started (a URL target's model)
                key = answer_key(target.identity_of(arm), target.answer_arm(arm), generation, prompt)
                cached = cache.get(key)
                if cached is not None:
                    result.answers[(prompt.set, prompt.id, arm)] = _as_arm(cached, arm)
                    result.reused += 1
                    progress.advance(1, "cached")
                    return
            async with slots:
                try:
                    g = await target.generate(arm, prompt, generation)
                except AnswerFailed as exc:
                    logger.warning("%s/%s on %s failed: %s", prompt.set, prompt.id, arm, exc)
                    result.failed[(prompt.set, arm)] += 1
                    progress.advance(1, "failed")
                    return
            answer = Answer(
                key=key,
                set=prompt.set,
                prompt_id=prompt.id,
                arm=arm,
                text=g.text,
                latency_ms=g.latency_ms,
                raw=g.raw,
                rewritten_prompt=g.rewritten_prompt,
                rewriter_skipped=g.rewriter_skipped,
                aligner_skipped=g.aligner_skipped,
                rewriter_ms=g.rewriter_ms,
                aligner_ms=g.aligner_ms,
                finish_reason=g.finish_reason,
            )
            cache.add(answer)
            result.answers[(prompt.set, prompt.id, arm)] = answer
            result.generated += 1
            progress.advance(1, "new")

        tasks = [asyncio.ensure_future(one(*item)) for item in todo]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            progress.close()
    return result


def pair_items(
    judge: Judge,
    prompts: Sequence[Prompt],
    arms: Sequence[str],
    baseline: str,
    answers: dict[tuple[str, str, str], Answer],
    criterion: str | None = None,
) -> list[PairItem]:
    """Every (prompt, arm vs baseline) both of whose answers exist, keyed for ``judge``."""
    items: list[PairItem] = []
    for prompt in prompts:
        base = answers.get((prompt.set, prompt.id, baseline))
        if base is None:
            continue
        for arm in arms:
            cand = answers.get((prompt.set, prompt.id, arm))
            if arm == baseline or cand is None:
                continue
            crit = criterion or prompt.criterion
            key = digest(
                {
                    "judge": judge.identity,
                    "criterion": crit,
                    "messages": prompt.wire(),
                    "arm": arm,
                    "baseline": baseline,
                    "candidate": cand.text,
                    "baseline_text": base.text,
                }
            )
            items.append(PairItem(key, prompt, arm, baseline, cand.text, base.text, crit))
    return items


@dataclass
class JudgingResult:
    #: judge name → the judgements of this run's pairs (cached or new).
    judgements: dict[str, list[Judgement]] = field(default_factory=dict)
    judged: int = 0
    reused: int = 0
    unjudged: int = 0




async def judge(
    judges: Sequence[Judge],
    items_by_judge: dict[str, list[PairItem]],
    cache: RecordFile[Judgement],
    stream: TextIO | None = None,
) -> JudgingResult:
    """Every item of every judge: from ``cache``, as a tie when both answers are identical, else judged."""
    result = JudgingResult()
    for j in judges:
        items = items_by_judge.get(j.name, [])
        kept: list[Judgement] = []
        todo: list[PairItem] = []
        for item in items:
            cached = cache.get(item.key)
            if cached is not None:
                kept.append(cached)
                result.reused += 1
            elif item.candidate == item.baseline_text:
                tie = item.judgement(j.name, "tie", "identical")
                cache.add(tie)
                kept.append(tie)
                result.judged += 1
            else:
                todo.append(item)
        if todo:
            progress = Progress(f"judge {j.name}", len(items), stream)
            progress.advance(len(items) - len(todo), "cached")

            def done(judgement: Judgement, kept: list[Judgement] = kept, progress: Progress = progress) -> None:
                cache.add(judgement)
                kept.append(judgement)
                result.judged += 1
                progress.advance(1, judgement.outcome)

            try:
                result.unjudged += await j.judge_all(todo, done)
            finally:
                progress.close()
        result.judgements[j.name] = kept
    return result
