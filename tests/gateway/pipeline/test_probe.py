"""gateway/pipeline/probe.py: each helper probed once, its result and the hint for a helper that does not fit."""

from __future__ import annotations

import asyncio

from gateway.pipeline.probe import ALIGN_PROBE, REWRITE_PROBE, HelperProbes, probe_aligner, probe_rewriter
from models.aligner import Aligner
from models.engine import EngineTimeout
from models.rewriter import Rewriter
from tests.models.support import ScriptedEngine


async def test_a_rewriter_that_rewrites_is_ok() -> None:
    engine = ScriptedEngine(["Name the capital city of France, and say briefly why it became the capital?"])
    result = await probe_rewriter(Rewriter(engine, "bpo-chat"))
    assert (result.helper, result.template, result.status, result.reason) == ("rewriter", "bpo-chat", "ok", None)
    assert result.output is not None and result.output.startswith("Name the capital")
    assert REWRITE_PROBE in str(engine.calls[0].prompt)


async def test_a_rewriter_that_answers_is_a_warning_that_says_so() -> None:
    result = await probe_rewriter(Rewriter(ScriptedEngine(["The capital of France is Paris."]), "bpo-chat"))
    assert (result.status, result.reason) == ("warning", "answered")
    assert result.hint is not None and "answered the question instead of rewriting" in result.hint


async def test_nothing_back_from_a_completion_template_names_the_chat_one() -> None:
    result = await probe_rewriter(Rewriter(ScriptedEngine([""]), "bpo"))
    assert (result.status, result.reason) == ("warning", "empty")
    assert result.hint is not None and "try template 'bpo-chat'" in result.hint
    aligned = await probe_aligner(Aligner(ScriptedEngine([""]), "aligner-chat"))
    assert (aligned.status, aligned.reason) == ("warning", "empty")
    assert aligned.hint is not None and "try template 'aligner-v1'" in aligned.hint


async def test_an_aligner_that_keeps_a_right_answer_is_ok_and_a_failing_one_failed() -> None:
    engine = ScriptedEngine([ALIGN_PROBE[1]])
    result = await probe_aligner(Aligner(engine, "aligner-v1"))
    assert (result.status, result.output) == ("ok", ALIGN_PROBE[1])
    failing = ScriptedEngine(error=EngineTimeout("slow"))
    failed = await probe_aligner(Aligner(failing, "aligner-v1"))
    assert (failed.status, failed.reason) == ("failed", "timeout")


async def test_probes_are_pending_then_done_and_close_cancels() -> None:
    rewriter = Rewriter(ScriptedEngine(["x"], delay_s=0.2), "bpo")
    probes = HelperProbes(rewriter, Aligner(ScriptedEngine(["y"]), "aligner-v1"))
    assert {k: v.status for k, v in probes.results().items()} == {"rewriter": "pending", "aligner": "pending"}
    probes.start()
    for _ in range(100):
        if all(r.status != "pending" for r in probes.results().values()):
            break
        await asyncio.sleep(0.02)
    statuses = {k: v.status for k, v in probes.results().items()}
    assert statuses["aligner"] == "ok" and statuses["rewriter"] == "warning"  # "x": under half the words
    slow = HelperProbes(Rewriter(ScriptedEngine(["x"], delay_s=5), "bpo"), None)
    slow.start()
    await slow.close()  # cancels the probe in flight, no error
    assert slow.results()["rewriter"].status == "pending"
    assert HelperProbes(None, None).results() == {}
