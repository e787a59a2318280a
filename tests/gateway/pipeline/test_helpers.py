"""gateway/pipeline/helpers.py: timing, metrics and the ``on_error`` policy around the helper calls."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import REGISTRY

from gateway.pipeline.helpers import CorrectionStream, HelperFailed, Helpers, OnError
from models.aligner import Aligner
from models.engine import EngineError, EngineOverloaded, EngineTimeout
from models.rewriter import Rewriter
from tests.gateway.pipeline.support import CORRECTED, REWRITTEN, AlignerEngine, RewriterEngine

QUESTION = "how to bake bread"
ANSWER = "Mix flour and water, then bake it."
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": QUESTION}]

ERRORS = [
    (EngineTimeout("too slow"), "timeout"),
    (EngineOverloaded("queue full"), "overloaded"),
    (EngineError("boom"), "error"),
]


class Metrics:
    """Reads the helper metrics, as deltas from when it was made."""

    def __init__(self) -> None:
        self._base = self._now()

    @staticmethod
    def _now() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        for name in ("aligngate_helper_failures", "aligngate_helper_skips", "aligngate_helper_duration_seconds"):
            for family in REGISTRY.collect():
                if family.name != name:
                    continue
                for s in family.samples:
                    out[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return out

    def delta(self, name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        now = REGISTRY.get_sample_value(name, labels) or 0.0
        return now - self._base.get(key, 0.0)

    def failures(self, helper: str, reason: str) -> float:
        return self.delta("aligngate_helper_failures_total", helper=helper, reason=reason)

    def skips(self, helper: str, reason: str) -> float:
        return self.delta("aligngate_helper_skips_total", helper=helper, reason=reason)

    def durations(self, helper: str) -> float:
        return self.delta("aligngate_helper_duration_seconds_count", helper=helper)

    def duration_sum(self, helper: str) -> float:
        return self.delta("aligngate_helper_duration_seconds_sum", helper=helper)

    def all_failures(self) -> float:
        return sum(self.failures(h, r) for h in ("rewriter", "aligner") for r in ("timeout", "overloaded", "error"))


@pytest.fixture
def metrics() -> Iterator[Metrics]:
    yield Metrics()


def helpers(
    rw: RewriterEngine | None = None,
    al: AlignerEngine | None = None,
    on_error: OnError = "skip",
    **rewriter_kwargs: Any,
) -> Helpers:
    return Helpers(
        Rewriter(rw, "bpo", **rewriter_kwargs) if rw is not None else None,
        Aligner(al, "aligner-v1") if al is not None else None,
        rewriter_on_error=on_error, aligner_on_error=on_error,
    )


# ---------------------------------------------------------------- rewriter


async def test_rewrite_replaces_the_last_user_message_and_times_the_call(metrics: Metrics) -> None:
    rw = RewriterEngine(delay_s=0.02)
    outcome = await helpers(rw).rewrite(MESSAGES)
    assert outcome.rewritten == REWRITTEN
    assert outcome.skipped is None
    assert outcome.messages == [MESSAGES[0], {"role": "user", "content": REWRITTEN}]
    assert MESSAGES[1]["content"] == QUESTION  # the input is left alone
    assert outcome.elapsed_s >= 0.02
    assert metrics.durations("rewriter") == 1
    assert metrics.duration_sum("rewriter") >= 0.02
    assert metrics.all_failures() == 0
    [call] = rw.calls
    assert call.prompt == (
        "[INST] You are an expert prompt engineer. Please help me improve this prompt to get a more helpful and "
        f"harmless response:\n{QUESTION} [/INST]"
    )
    assert (call.params.temperature, call.params.top_p) == (0.6, 0.9)


async def test_a_cached_rewrite_is_not_timed_again(metrics: Metrics) -> None:
    rw = RewriterEngine()
    h = helpers(rw)
    first = await h.rewrite(MESSAGES)
    second = await h.rewrite(MESSAGES)
    assert first.rewritten == second.rewritten == REWRITTEN
    assert len(rw.calls) == 1
    assert metrics.durations("rewriter") == 1


@pytest.mark.parametrize(("exc", "reason"), ERRORS)
async def test_rewriter_failure_with_skip_keeps_the_original(metrics: Metrics, exc: Exception, reason: str) -> None:
    outcome = await helpers(RewriterEngine(error=exc)).rewrite(MESSAGES)
    assert outcome.messages == MESSAGES
    assert outcome.rewritten is None
    assert outcome.skipped == f"failed:{reason}"
    assert metrics.failures("rewriter", reason) == 1
    assert metrics.all_failures() == 1
    assert metrics.durations("rewriter") == 0


@pytest.mark.parametrize(("exc", "reason"), ERRORS)
async def test_rewriter_failure_with_fail_is_a_502_naming_the_helper(
    metrics: Metrics, exc: Exception, reason: str
) -> None:
    with pytest.raises(HelperFailed) as info:
        await helpers(RewriterEngine(error=exc), on_error="fail").rewrite(MESSAGES)
    err = info.value
    assert (err.status, err.type, err.code) == (502, "upstream_error", "helper_failed")
    assert err.message == f"The rewriter failed ({reason})."  # the exception's text stays in the log
    assert isinstance(err.__cause__, type(exc))
    assert metrics.failures("rewriter", reason) == 1  # counted whatever the policy


async def test_the_rewriter_timeout_is_a_timeout_failure(metrics: Metrics) -> None:
    outcome = await helpers(RewriterEngine(delay_s=5), timeout_s=0.05).rewrite(MESSAGES)
    assert outcome.skipped == "failed:timeout"
    assert metrics.failures("rewriter", "timeout") == 1


@pytest.mark.parametrize(
    ("text", "reason", "kwargs"),
    [
        ("", "empty", {}),
        ("   ", "empty", {}),
        (" ".join(["word"] * 25), "too_long_output", {}),  # > 6 x 4 words
        ("bread", "too_short_output", {}),  # < 0.5 x 4 words
        (REWRITTEN, "prompt_too_long", {"max_prompt_words": 3}),
    ],
)
async def test_rewriter_guards_keep_the_original_and_count_a_skip_not_a_failure(
    metrics: Metrics, text: str, reason: str, kwargs: dict[str, Any]
) -> None:
    rw = RewriterEngine(text=text)
    outcome = await helpers(rw, **kwargs).rewrite(MESSAGES)
    assert outcome.messages == MESSAGES
    assert outcome.rewritten is None
    assert outcome.skipped == reason
    assert metrics.skips("rewriter", reason) == 1
    assert metrics.all_failures() == 0
    assert len(rw.calls) == (0 if reason == "prompt_too_long" else 1)


# ---------------------------------------------------------------- aligner, whole


async def test_correct_returns_the_correction_and_times_it(metrics: Metrics) -> None:
    al = AlignerEngine(delay_s=0.02)
    outcome = await helpers(al=al).correct(QUESTION, ANSWER)
    assert (outcome.text, outcome.corrected, outcome.skipped) == (CORRECTED + ANSWER, True, None)
    assert outcome.elapsed_s >= 0.02
    assert metrics.durations("aligner") == 1
    [call] = al.calls
    assert call.prompt == (
        "BEGINNING OF CONVERSATION: USER: Edit the following Question-Answer pair to make it more helpful and "
        f"harmless: {QUESTION} | {ANSWER} ASSISTANT:"
    )
    assert call.params.temperature == 0.0  # greedy


@pytest.mark.parametrize(("exc", "reason"), ERRORS)
async def test_aligner_failure_with_skip_serves_the_original(metrics: Metrics, exc: Exception, reason: str) -> None:
    outcome = await helpers(al=AlignerEngine(error=exc)).correct(QUESTION, ANSWER)
    assert (outcome.text, outcome.corrected, outcome.skipped) == (ANSWER, False, f"failed:{reason}")
    assert metrics.failures("aligner", reason) == 1
    assert metrics.all_failures() == 1


@pytest.mark.parametrize(("exc", "reason"), ERRORS)
async def test_aligner_failure_with_fail_raises(metrics: Metrics, exc: Exception, reason: str) -> None:
    with pytest.raises(HelperFailed) as info:
        await helpers(al=AlignerEngine(error=exc), on_error="fail").correct(QUESTION, ANSWER)
    assert info.value.status == 502 and info.value.message == f"The aligner failed ({reason})."
    assert metrics.failures("aligner", reason) == 1


async def test_an_empty_correction_keeps_the_original_as_a_skip(metrics: Metrics) -> None:
    outcome = await helpers(al=AlignerEngine(text="  ")).correct(QUESTION, ANSWER)
    assert (outcome.text, outcome.corrected, outcome.skipped) == (ANSWER, False, "empty")
    assert metrics.skips("aligner", "empty") == 1
    assert metrics.all_failures() == 0


async def test_a_truncated_correction_keeps_the_original(metrics: Metrics) -> None:
    outcome = await helpers(al=AlignerEngine(finish_reason="length")).correct(QUESTION, ANSWER)
    assert (outcome.text, outcome.corrected, outcome.skipped) == (ANSWER, False, "truncated")
    assert metrics.skips("aligner", "truncated") == 1


async def test_an_empty_answer_is_not_sent_to_the_aligner(metrics: Metrics) -> None:
    al = AlignerEngine()
    outcome = await helpers(al=al).correct(QUESTION, "")
    assert (outcome.text, outcome.corrected, outcome.skipped) == ("", False, "no_answer")
    assert al.calls == []


# ---------------------------------------------------------------- aligner, streamed


async def drain(stream: CorrectionStream) -> list[str]:
    out = [await stream.first()]
    async for delta in stream.rest():
        out.append(delta)
    return out


async def test_a_streamed_correction_comes_word_by_word(metrics: Metrics) -> None:
    al = AlignerEngine()
    stream = helpers(al=al).stream_correct(QUESTION, ANSWER)
    deltas = await drain(stream)
    assert len(deltas) > 3
    assert "".join(deltas) == CORRECTED + ANSWER
    assert stream.skipped is None and not stream.fell_back
    assert metrics.durations("aligner") == 1
    assert [c.method for c in al.calls] == ["stream_complete"]


@pytest.mark.parametrize(("exc", "reason"), ERRORS)
async def test_a_stream_failing_before_its_first_delta_with_skip_is_the_original(
    metrics: Metrics, exc: Exception, reason: str
) -> None:
    stream = helpers(al=AlignerEngine(error=exc)).stream_correct(QUESTION, ANSWER)
    assert await drain(stream) == [ANSWER]
    assert stream.fell_back and stream.skipped == f"failed:{reason}"
    assert metrics.failures("aligner", reason) == 1


async def test_a_stream_failing_before_its_first_delta_with_fail_raises(metrics: Metrics) -> None:
    stream = helpers(al=AlignerEngine(error=EngineOverloaded("full")), on_error="fail").stream_correct(
        QUESTION, ANSWER
    )
    with pytest.raises(HelperFailed, match="aligner"):
        await stream.first()
    assert metrics.failures("aligner", "overloaded") == 1


@pytest.mark.parametrize("on_error", ["skip", "fail"])
async def test_a_stream_failing_after_text_went_out_raises_whatever_the_policy(
    metrics: Metrics, on_error: OnError
) -> None:
    al = AlignerEngine(error=EngineError("died"), error_after_first=True)
    stream = helpers(al=al, on_error=on_error).stream_correct(QUESTION, ANSWER)
    assert await stream.first() == "CORRECTED:"
    with pytest.raises(HelperFailed, match="mid-stream") as info:
        async for _ in stream.rest():
            pass
    assert "died" not in info.value.message
    assert metrics.failures("aligner", "error") == 1
    assert al.streams_closed == 1


async def test_an_empty_streamed_correction_is_the_original_and_a_skip(metrics: Metrics) -> None:
    stream = helpers(al=AlignerEngine(text="")).stream_correct(QUESTION, ANSWER)
    assert "".join(await drain(stream)) == ANSWER
    assert stream.skipped == "empty"
    assert metrics.skips("aligner", "empty") == 1
    assert metrics.all_failures() == 0


async def test_aclose_stops_the_engine_stream() -> None:
    al = AlignerEngine()
    stream = helpers(al=al).stream_correct(QUESTION, ANSWER)
    assert await stream.first() == "CORRECTED:"
    await stream.aclose()
    assert al.streams_closed == 1


async def test_waited_s_counts_the_time_waiting_for_the_aligner() -> None:
    stream = helpers(al=AlignerEngine(delay_s=0.05, token_delay_s=0.01)).stream_correct(QUESTION, ANSWER)
    await drain(stream)
    assert stream.waited_s >= 0.05 + 0.01 * 5
