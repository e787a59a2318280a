"""Sentence-by-sentence correction on the in-process engine: the sentence corrections of concurrent streams are
decoded together in its batches (a tiny scripted model answers every correction with the same text)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.gateway.pipeline.support import make_rig
from tests.gateway.pipeline.test_pipeline import chat_text
from tests.gateway.pipeline.test_sentences import body, stream

pytest.importorskip("torch")

from models.local import LocalEngine
from tests.models.local.tiny import build_scripted


async def test_concurrent_streams_batch_their_sentence_corrections(tmp_path: Path) -> None:
    script = build_scripted(tmp_path / "model")
    # a wide batch window: the first sentences of both streams are complete at the same moment
    engine = LocalEngine(str(script.path), cache_dir=tmp_path / "cache", batch_window_s=0.2, num_threads=1)
    await engine.start()
    try:
        rig = make_rig(aligner_engine=engine, aligner_template="stream-chat", aligner_stream="sentence")
        reply = "One here. Two there."
        results = await asyncio.gather(*(stream(rig, body(reply, fake={"token_delay_s": 0.02}), trace=True)
                                         for _ in range(2)))
        for events, done in results:
            assert done
            assert chat_text(events) == f"{script.text} {script.text}"  # each sentence is the model's answer
            assert [s["original"] for s in events[-1]["aligngate"]["sentences"]] == ["One here. ", "Two there."]
        stats = engine.stats
        assert stats.requests == 4
        assert stats.max_rows >= 2  # two streams' corrections decoded together
    finally:
        await engine.close()
