"""The LLM judge against the fake judge as a real process: both orders asked, position bias cancelled, garbage
and half-garbage verdicts invalid, scripted server errors left unjudged, verdict reasoning kept."""

from __future__ import annotations

import asyncio
from pathlib import Path

from gateway.eval.config import LLMJudgeSpec
from gateway.eval.judges import PairItem
from gateway.eval.llm_judge import LLMJudge
from gateway.eval.records import Judgement, Message, Prompt
from tests.e2e.support import Procs
from tests.gateway.eval.support import FakeJudge

SCRIPT = {
    "rules": [
        # p-win: the candidate wins in both orders (markers, then words).
        {"a": "cand-win", "b": "base-win", "reply": "A explains more. [[A]]"},
        {"a": "base-win", "b": "cand-win", "reply": "Assistant B is better."},
        # p-lose: JSON, then a bare letter.
        {"a": "cand-lose", "b": "base-lose", "reply": '{"verdict": "B", "why": "safer"}'},
        {"a": "base-lose", "b": "cand-lose", "reply": "A"},
        # p-bias: always the first position -> flips with the order -> tie.
        {"a": "cand-bias", "reply": "[[A]]"},
        {"a": "base-bias", "reply": "[[A]]"},
        # p-garbage: nothing parsable either way -> invalid.
        {"contains": "garbage", "reply": "I like turtles."},
        # p-half: one order parsable, the other not -> invalid (one order alone cannot cancel position bias).
        {"a": "cand-half", "reply": "[[A]]"},
        {"a": "base-half", "reply": "hmm, hard to say"},
        # p-down: the judge fails with 503 every time -> left unjudged (retried twice), not a verdict.
        {"contains": "down", "status": 503},
    ],
    "default": "[[C]]",
}


def _item(name: str) -> PairItem:
    prompt = Prompt("s", name, (Message("user", f"question {name}"),), "helpful")
    return PairItem(f"key-{name}", prompt, "align", "control", f"cand-{name}", f"base-{name}", "helpful")


async def _judge(url: str, names: list[str]) -> tuple[dict[str, Judgement], int]:
    judge = LLMJudge("llm:fake", LLMJudgeSpec(url=url, model="fake-judge", timeout_s=10), concurrency=4)
    await judge.start()
    got: dict[str, Judgement] = {}
    try:
        failed = await judge.judge_all([_item(n) for n in names], lambda j: got.__setitem__(j.prompt_id, j))
    finally:
        await judge.close()
    return got, failed


def test_both_orders_position_bias_and_invalid_verdicts(procs: Procs, tmp_path: Path) -> None:
    fake = FakeJudge(tmp_path, SCRIPT)
    procs._started.append(fake)
    names = ["win", "lose", "bias", "garbage", "half", "down", "same"]
    got, failed = asyncio.run(_judge(fake.v1, names))
    assert failed == 1 and "down" not in got
    outcome = {n: (j.outcome, j.reason, j.verdicts) for n, j in got.items()}
    assert outcome["win"] == ("win", None, ("A", "B"))
    assert outcome["lose"] == ("lose", None, ("B", "A"))
    assert outcome["bias"] == ("tie", "order_flip", ("A", "A"))
    assert outcome["garbage"] == ("invalid", "both_invalid", (None, None))
    assert outcome["half"] == ("invalid", "one_invalid", ("A", None))
    assert outcome["same"] == ("tie", None, ("tie", "tie"))
    assert got["win"].reasoning == ("A explains more. [[A]]", "Assistant B is better.")
    # two calls per judged pair, three for each order of the failing one (one try and two retries)
    assert fake.calls() == 2 * 6 + 2 * 3


def test_unreachable_judge_is_a_judge_error() -> None:
    from gateway.eval.judges import JudgeError
    from tests.e2e.support import free_port

    judge = LLMJudge("llm:gone", LLMJudgeSpec(url=f"http://127.0.0.1:{free_port()}/v1", model="m"), 1)
    try:
        asyncio.run(judge.start())
    except JudgeError as exc:
        assert "cannot reach" in str(exc)
    else:
        raise AssertionError("no JudgeError")
