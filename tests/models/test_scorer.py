"""models/scorer.py: the batching queue (concurrent callers in one forward pass, the batch size, a caller's own
preparation error, a failed pass, a caller that gave up, close) with scripted prepare/forward, and a tiny random
reward model built here scoring exactly as ``models.reward`` does."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from models.scorer import BatchScorer, RewardScorer, ScoreItem, scoring_messages

USER = [{"role": "user", "content": "q"}]


def item(answer: str) -> ScoreItem:
    return (USER, answer)


def prepare(pair: ScoreItem) -> str:
    if pair[1] == "bad":
        raise ValueError("cannot render")
    return pair[1]


def lengths(texts: list[str]) -> list[float]:
    if "boom" in texts:
        raise RuntimeError("forward failed")
    return [float(len(t)) for t in texts]


async def test_concurrent_callers_share_one_forward_pass() -> None:
    scorer = BatchScorer(prepare, lengths, batch_size=16, max_wait_s=0.05)
    try:
        got = await asyncio.gather(scorer.score([item("a"), item("bb")]), scorer.score([item("ccc")]),
                                   scorer.score([item("dddd"), item("")]))
        assert got == [[1.0, 2.0], [3.0], [4.0, 0.0]]
        assert scorer.batches == [5]
        assert await scorer.score([]) == []
    finally:
        await scorer.close()


async def test_a_batch_holds_at_most_batch_size_pairs() -> None:
    scorer = BatchScorer(prepare, lengths, batch_size=4, max_wait_s=0.05)
    try:
        got = await asyncio.gather(*(scorer.score([item("x"), item("yy")]) for _ in range(3)))
        assert got == [[1.0, 2.0]] * 3
        assert scorer.batches == [4, 2]
    finally:
        await scorer.close()


async def test_a_caller_fails_alone_for_its_own_pairs_and_a_failed_pass_fails_its_callers() -> None:
    scorer = BatchScorer(prepare, lengths, max_wait_s=0.05)
    try:
        good, bad = await asyncio.gather(scorer.score([item("ok")]), scorer.score([item("bad")]),
                                         return_exceptions=True)
        assert good == [2.0] and isinstance(bad, ValueError)
        both = await asyncio.gather(scorer.score([item("boom")]), scorer.score([item("ok")]), return_exceptions=True)
        assert all(isinstance(e, RuntimeError) for e in both)
        assert await scorer.score([item("fine")]) == [4.0]  # the queue goes on
    finally:
        await scorer.close()


async def test_a_caller_that_gave_up_is_left_out_and_close_fails_the_waiting() -> None:
    scorer = BatchScorer(prepare, lengths, max_wait_s=0.2)
    try:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(scorer.score([item("gone")]), 0.01)
        assert await scorer.score([item("here")]) == [4.0]
        assert scorer.batches == [1]
        waiting = asyncio.ensure_future(scorer.score([item("late")]))
        await asyncio.sleep(0.01)
    finally:
        await scorer.close()
    with pytest.raises(RuntimeError, match="closed"):
        await waiting


def test_scoring_messages_keep_role_and_text() -> None:
    parts = [{"type": "text", "text": "look"}, {"type": "image_url", "image_url": {"url": "x"}}]
    assert scoring_messages([{"role": "user", "content": parts}, {"role": "assistant", "content": None}]) == [
        {"role": "user", "content": "look"}, {"role": "assistant", "content": ""}]


async def test_a_reward_scorer_scores_as_models_reward(tmp_path: Path) -> None:
    import torch

    from models.reward import completion_scores, load_reward_model, scoring_item
    from tests.models.local.tiny import build_random_reward

    torch.set_num_threads(1)
    path = build_random_reward(tmp_path / "rm")
    pairs = [item("the quick brown fox"), item("hello world"), ([{"role": "system", "content": "s"}, *USER], "a")]
    model, tokenizer = load_reward_model(path)
    expected = completion_scores(model, tokenizer, [scoring_item(tokenizer, m, a) for m, a in pairs], max_length=32)
    scorer = RewardScorer(path, device="cpu", max_length=32, max_wait_s=0.05)
    await scorer.start()
    try:
        got = await asyncio.gather(scorer.score(pairs[:2]), scorer.score(pairs[2:]))
        assert got[0] + got[1] == pytest.approx(expected, abs=1e-4)
        assert scorer.batches == [3]
    finally:
        await scorer.close()
