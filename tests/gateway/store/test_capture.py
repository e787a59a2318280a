"""What the app records per request (through the inference service, the pipeline and the middleware): the
arm, the assignment, the texts before and after each helper, token counts and timings, streamed or not."""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from gateway.config import StoreSettings
from gateway.store.store import Store
from tests.gateway.pipeline.support import CORRECTED, MODEL, REWRITTEN, Rig, make_rig

QUESTION = "how do I bake bread"
ARMS = {"control": 1, "rewrite": 1, "align": 1, "rewrite+align": 1}


@pytest.fixture
async def rig_for(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    stores: list[Store] = []

    async def make(**store_kw: Any) -> Rig:
        store = Store(StoreSettings(url=f"sqlite:///{tmp_path / f'c{len(stores)}.db'}", **store_kw))
        await store.start()
        stores.append(store)
        return make_rig(store=store, arms=ARMS, experiment="exp-1")

    yield make
    for store in stores:
        await store.close()


async def send(rig: Rig, body: dict[str, Any], headers: dict[str, str], path: str = "/v1/chat/completions") -> str:
    transport = httpx.ASGITransport(app=rig.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
        r = await client.post(path, json=body, headers=headers)
        assert r.status_code == 200, r.text
        await r.aread()
    rid: str = r.headers["x-request-id"]
    return rid


async def row_of(rig: Rig, rid: str) -> dict[str, Any]:
    store: Store = rig.app.state.feedback.store
    await store.flush()
    with sqlite3.connect(str(store.url.database)) as conn:
        conn.row_factory = sqlite3.Row
        found = conn.execute("SELECT * FROM requests WHERE id = ?", (rid,)).fetchone()
    assert found is not None, rid
    return dict(found)


def db_bytes(rig: Rig) -> bytes:
    """The database file and its WAL, as bytes (to show what is not in them)."""
    db = str(rig.app.state.feedback.store.url.database)
    return Path(db).read_bytes() + Path(f"{db}-wal").read_bytes()


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("arm", ["control", "rewrite", "align", "rewrite+align"])
async def test_each_arm_records_what_its_helpers_did(rig_for: Callable[..., Any], arm: str, stream: bool) -> None:
    rig = await rig_for()
    body = {"model": MODEL, "messages": [{"role": "user", "content": QUESTION}], "stream": stream,
            "stream_options": {"include_usage": True} if stream else None}
    rid = await send(rig, {k: v for k, v in body.items() if v is not None}, {"X-Aligngate-Arm": arm})
    row = await row_of(rig, rid)
    assert (row["arm"], row["arm_forced"], row["stream"], row["status"]) == (arm, 1, int(stream), 200)
    assert row["experiment"] == "exp-1" and row["model"] == MODEL and row["endpoint"] == "chat"
    assert orjson.loads(row["messages"]) == [{"role": "user", "content": QUESTION}]  # the user's own words
    rewrites = "rewrite" in arm
    aligns = "align" in arm
    assert row["rewritten_prompt"] == (REWRITTEN if rewrites else None)
    backend_answer = f"Answer 0: {REWRITTEN if rewrites else QUESTION}"
    assert row["raw_answer"] == backend_answer
    assert row["final_answer"] == (CORRECTED + backend_answer if aligns else backend_answer)
    assert (row["rewriter_ms"] is not None) == rewrites and (row["aligner_ms"] is not None) == aligns
    assert (row["prompt_tokens"], row["completion_tokens"]) == (5, 4)
    assert row["latency_ms"] > 0 and row["overhead_ms"] >= 0 and row["ttft_ms"] > 0


async def test_completions_record_the_prompt_as_a_user_turn(rig_for: Callable[..., Any]) -> None:
    rig = await rig_for()
    rid = await send(rig, {"model": MODEL, "prompt": QUESTION}, {"X-Aligngate-Arm": "align"}, "/v1/completions")
    row = await row_of(rig, rid)
    assert row["endpoint"] == "completions"
    assert orjson.loads(row["messages"]) == [{"role": "user", "content": QUESTION}]
    assert row["final_answer"] == CORRECTED + f"Answer 0: {QUESTION}"


async def test_the_assignment_is_recorded_with_the_user_key_hashed(rig_for: Callable[..., Any]) -> None:
    rig = await rig_for()
    rid = await send(rig, {"model": MODEL, "messages": [{"role": "user", "content": "hi there"}]},
                     {"X-Aligngate-User": "alice@example.com"})
    row = await row_of(rig, rid)
    assert row["arm_forced"] == 0 and row["user_source"] == "header" and row["bucket"] is not None
    assert row["user_key_hash"] == hashlib.sha256(b"alice@example.com").hexdigest()
    assert b"alice@example.com" not in db_bytes(rig)
    rid = await send(rig, {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}, {})
    row = await row_of(rig, rid)
    assert (row["user_source"], row["user_key_hash"], row["bucket"]) == ("random", None, None)


@pytest.mark.parametrize("stream", [False, True])
async def test_log_bodies_off_records_no_text(rig_for: Callable[..., Any], stream: bool) -> None:
    rig = await rig_for(log_bodies=False)
    body = {"model": MODEL, "messages": [{"role": "user", "content": QUESTION}], "stream": stream}
    for arm in ("control", "rewrite+align"):
        rid = await send(rig, body, {"X-Aligngate-Arm": arm})
        row = await row_of(rig, rid)
        assert row["arm"] == arm
        assert [row[k] for k in ("messages", "rewritten_prompt", "raw_answer", "final_answer")] == [None] * 4
    raw = db_bytes(rig)
    assert QUESTION.encode() not in raw and REWRITTEN.encode() not in raw


async def test_a_backend_error_is_recorded_with_its_status(rig_for: Callable[..., Any]) -> None:
    rig = await rig_for()
    transport = httpx.ASGITransport(app=rig.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
        r = await client.post("/v1/chat/completions", json={
            "model": MODEL, "messages": [{"role": "user", "content": "x"}], "fake": {"status": 503}})
    assert r.status_code == 503
    row = await row_of(rig, r.headers["x-request-id"])
    assert row["status"] == 503 and row["raw_answer"] is None and row["final_answer"] is None


async def test_requests_refused_before_an_arm_are_not_recorded(rig_for: Callable[..., Any]) -> None:
    rig = await rig_for()
    transport = httpx.ASGITransport(app=rig.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
        unknown_model = {"model": "nope", "messages": [{"role": "user", "content": "x"}]}
        assert (await client.post("/v1/chat/completions", json=unknown_model)).status_code == 404
        assert (await client.post("/v1/chat/completions", content=b"{")).status_code == 400
        assert (await client.get("/healthz")).status_code == 200
    store: Store = rig.app.state.feedback.store
    await store.flush()
    with sqlite3.connect(str(store.url.database)) as conn:
        assert conn.execute("SELECT count(*) FROM requests").fetchone() == (0,)
