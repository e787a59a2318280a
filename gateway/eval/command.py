"""``aligngate eval --config EVAL.yaml [--out DIR] [--from-store URL [--experiment NAME]] [key=value ...]``.

The steps: load and check the config; read the prompt sets (or, with ``--from-store``, the store's served and
shadow answers); open the output folder's ``answers.jsonl`` and ``judgements.jsonl`` (kept from earlier runs);
start the judges (so an unreachable judge stops the run before any generation); answer what is missing;
judge what is missing; write ``report.md`` and ``report.png``; print the tables and, last, one JSON line.

Exit status: 0 done; 1 the output folder cannot be written; 2 a bad config, an unknown key, an empty or
unreadable prompt set, an unreachable (or refusing) target or judge, an unreadable store — one line on stderr,
no traceback, and whatever was cached stays; 130 interrupted (Ctrl-C / SIGINT): every answer and judgement made
so far is in the output folder, and the same command resumes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from gateway.eval.cache import RecordFile
from gateway.eval.config import MODEL_ARMS, EvalConfig, EvalConfigError, load_eval_config, target_kind
from gateway.eval.judges import Judge, JudgeError, PairItem, build_judge
from gateway.eval.measures import ArmMeasures, measure
from gateway.eval.prompts import PromptError, load_prompt_set
from gateway.eval.records import Answer, Judgement, Prompt
from gateway.eval.report import EvalReport, headline, pairwise_rows, render_table, write_report
from gateway.eval.runner import GenerationResult, JudgingResult, generate, judge, pair_items
from gateway.eval.targets import Target, TargetError, build_target

__all__ = ["EvalArgs", "run_eval"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class EvalArgs:
    config: str | None
    out: str = "eval-out"
    from_store: str | None = None
    experiment: str | None = None
    overrides: tuple[str, ...] = ()


class _Fail(Exception):
    def __init__(self, message: str, status: int = 2) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class _Plan:
    """What to answer and compare, whichever the source."""

    prompts: list[Prompt]
    sets: dict[str, int]
    arms: tuple[str, ...]
    baseline: str
    target: Target | None
    description: str
    #: Answers already at hand (``--from-store``).
    answers: dict[tuple[str, str, str], Answer] = field(default_factory=dict)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _plan(config: EvalConfig, args: EvalArgs) -> _Plan:
    if args.from_store is not None:
        from gateway.eval.shadow import SERVED, SHADOW, read_pairs
        from gateway.report.source import StoreError

        try:
            pairs = read_pairs(args.from_store, args.experiment)
        except StoreError as exc:
            raise _Fail(_one_line(exc)) from None
        if not pairs.prompts:
            skipped = ", ".join(f"{k} {v}" for k, v in sorted(pairs.skipped.items())) or "no requests"
            raise _Fail(f"the store has no shadow corrections to judge ({skipped})")
        return _Plan(
            pairs.prompts,
            {"store": len(pairs.prompts)},
            (SHADOW, SERVED),
            SERVED,
            None,
            f"the store {args.from_store} (shadow corrections vs served answers)",
            pairs.answers,
        )
    prompts: list[Prompt] = []
    sets: dict[str, int] = {}
    for spec in config.prompts:
        try:
            loaded = load_prompt_set(spec)
        except PromptError as exc:
            raise _Fail(_one_line(exc)) from None
        prompts += loaded
        sets[loaded[0].set] = len(loaded)
    arms: tuple[str, ...]
    if target_kind(config.target) == "models":
        arms, baseline = MODEL_ARMS, "baseline"
    else:
        arms = tuple(config.arms) + (() if config.baseline in config.arms else (config.baseline,))
        baseline = config.baseline
    try:
        target = build_target(config.target, arms)
    except TargetError as exc:
        raise _Fail(_one_line(exc)) from None
    return _Plan(prompts, sets, arms, baseline, target, target.description)


async def _run(
    config: EvalConfig,
    plan: _Plan,
    judges: list[Judge],
    answers: RecordFile[Answer],
    judgements: RecordFile[Judgement],
    err: TextIO,
) -> tuple[GenerationResult, JudgingResult, dict[str, list[PairItem]]]:
    started: list[Judge] = []
    try:
        for j in judges:
            await j.start()
            started.append(j)
        if plan.target is not None:
            gen = await generate(
                plan.target, plan.prompts, plan.arms, config.generation, answers, config.concurrency, err
            )
        else:
            gen = GenerationResult(answers=dict(plan.answers), reused=len(plan.answers))
        items: dict[str, list[PairItem]] = {}
        for j, spec in zip(judges, config.judges, strict=True):
            criterion = spec.llm.criterion if spec.llm is not None else None
            items[j.name] = pair_items(j, plan.prompts, plan.arms, plan.baseline, gen.answers, criterion)
        judged = await judge(judges, items, judgements, err)
    finally:
        for j in started:
            await j.close()
    return gen, judged, items


def _measures(plan: _Plan, gen: GenerationResult) -> list[ArmMeasures]:
    out: list[ArmMeasures] = []
    for set_name in plan.sets:
        prompts = [p for p in plan.prompts if p.set == set_name]
        texts = {p.id: p.user_text for p in prompts}
        for arm in plan.arms:
            answers = [a for p in prompts if (a := gen.answers.get((set_name, p.id, arm))) is not None]
            out.append(measure(set_name, arm, answers, texts, gen.failed.get((set_name, arm), 0)))
    return out


def _execute(args: EvalArgs, out: TextIO, err: TextIO) -> int:
    try:
        config = load_eval_config(args.config, args.overrides)
    except EvalConfigError as exc:
        raise _Fail(_one_line(exc)) from None
    plan = _plan(config, args)
    try:
        judges = [build_judge(spec, config.concurrency) for spec in config.judges]
    except JudgeError as exc:
        raise _Fail(_one_line(exc)) from None
    out_dir = Path(args.out)
    try:
        answers = RecordFile(out_dir / "answers.jsonl", Answer).open()
        judgements = RecordFile(out_dir / "judgements.jsonl", Judgement).open()
    except OSError as exc:
        raise _Fail(f"cannot write into {out_dir}: {exc.strerror or exc}", 1) from None
    try:
        gen, judged, items = asyncio.run(_run(config, plan, judges, answers, judgements, err))
    except KeyboardInterrupt:
        print(
            f"aligngate: eval interrupted; {len(answers)} answers and {len(judgements)} judgements are saved in "
            f"{out_dir}: run the same command again to resume",
            file=err,
        )
        return 130
    except (TargetError, JudgeError) as exc:
        raise _Fail(f"{_one_line(exc)} (answers and judgements made so far are kept in {out_dir})") from None
    finally:
        answers.close()
        judgements.close()
    expected = {(it.prompt.set, it.arm, name): 0 for name, its in items.items() for it in its}
    for name, its in items.items():
        for it in its:
            expected[(it.prompt.set, it.arm, name)] += 1
    rows = pairwise_rows(judged.judgements, expected, plan.baseline)
    report = EvalReport(
        title="aligngate eval",
        target=plan.description,
        baseline=plan.baseline,
        rows=rows,
        measures=_measures(plan, gen),
        prompts=plan.sets,
        answers_generated=gen.generated,
        answers_reused=gen.reused if plan.target is not None else 0,
        answers_failed=sum(gen.failed.values()),
        judgements_made=judged.judged,
        judgements_reused=judged.reused,
        unjudged=judged.unjudged,
        judges=[j.name for j in judges],
    )
    try:
        files = write_report(report, out_dir)
    except OSError as exc:
        raise _Fail(f"cannot write the report into {out_dir}: {exc.strerror or exc}", 1) from None
    print(render_table(report), file=out)
    print(f"wrote {files.markdown}" + (f" and {files.png}" if files.png is not None else ""), file=out)
    if files.note is not None:
        print(f"note: {files.note}", file=err)
    print(json.dumps(headline(report, out_dir), ensure_ascii=False), file=out)
    return 0


def run_eval(args: EvalArgs, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Run the command; returns its exit status (see the module docstring)."""
    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    try:
        return _execute(args, out, err)
    except _Fail as exc:
        print(f"aligngate: eval: {exc}", file=err)
        return exc.status

