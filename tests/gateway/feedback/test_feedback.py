"""POST /v1/feedback through the app: recorded against a request of the store, 404 for unknown ids, 400 for
bad bodies, history kept (the latest counts), counted in aligngate_feedback_total."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway import metrics
from gateway.config import StoreSettings
from gateway.store.store import Store
from tests.gateway.pipeline.support import MODEL, Rig, make_rig

CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "how to bake bread"}]}


@pytest.fixture
async def rig(stores: Callable[..., Any]) -> Rig:
    return make_rig(store=await stores(flush_interval_s=0.05))


async def call(rig: Rig, method: str, path: str, **kw: Any) -> httpx.Response:
    transport = httpx.ASGITransport(app=rig.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
        return await client.request(method, path, **kw)


async def answered(rig: Rig, headers: dict[str, str] | None = None) -> str:
    r = await call(rig, "POST", "/v1/chat/completions", json=CHAT, headers=headers or {})
    assert r.status_code == 200, r.text
    rid: str = r.headers["x-request-id"]
    return rid


def db_rows(rig: Rig, sql: str) -> list[tuple[Any, ...]]:
    store: Store = rig.app.state.feedback.store
    with sqlite3.connect(str(store.url.database)) as conn:
        return conn.execute(sql).fetchall()


def spilled_bytes(directory: Path) -> bytes:
    return b"".join(p.read_bytes() for p in directory.glob("s.*"))


def fb_count(arm: str, rating: str) -> float:
    return metrics.FEEDBACK.labels(arm, rating)._value.get()  # type: ignore[no-any-return]


async def test_feedback_is_recorded_against_the_request(rig: Rig) -> None:
    rid = await answered(rig)
    before = fb_count("control", "1")
    r = await call(rig, "POST", "/v1/feedback",
                   json={"request_id": rid, "rating": 1, "comment": "nice", "correction": "Knead, rest, bake."})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["ok"] is True and body["request_id"] == rid
    assert isinstance(body["feedback_id"], str) and body["feedback_id"]
    assert fb_count("control", "1") == before + 1
    await rig.app.state.feedback.store.flush()
    assert db_rows(rig, "SELECT id, request_id, rating, comment, correction FROM feedback") == [
        (body["feedback_id"], rid, 1, "nice", "Knead, rest, bake.")
    ]


async def test_feedback_right_after_the_answer_finds_the_row_still_queued(stores: Callable[..., Any]) -> None:
    rig = make_rig(store=await stores(flush_interval_s=30, batch_size=1000), arms={"align": 1})
    rid = await answered(rig)
    assert db_rows(rig, "SELECT count(*) FROM requests") == [(0,)]  # not written yet
    before = fb_count("align", "-1")
    t = time.perf_counter()
    r = await call(rig, "POST", "/v1/feedback", json={"request_id": rid, "rating": -1})
    assert r.status_code == 200, r.text
    assert time.perf_counter() - t < 1  # no waiting for the flush
    assert fb_count("align", "-1") == before + 1
    await rig.app.state.feedback.store.flush()
    assert db_rows(rig, "SELECT count(*) FROM requests") == [(1,)]
    assert db_rows(rig, "SELECT request_id, rating FROM feedback") == [(rid, -1)]


async def test_a_request_served_by_another_process_is_found_in_the_database(stores: Callable[..., Any]) -> None:
    other = await stores()  # another worker's store on the same database
    rig = make_rig(store=await stores(), arms={"rewrite": 1})
    other_rig = make_rig(store=other, arms={"rewrite": 1})
    rid = await answered(other_rig)
    await other.flush()
    assert rig.app.state.feedback.store.recent_arm(rid) is None
    before = fb_count("rewrite", "1")
    r = await call(rig, "POST", "/v1/feedback", json={"request_id": rid, "rating": 1})
    assert r.status_code == 200, r.text
    assert fb_count("rewrite", "1") == before + 1


async def test_an_unknown_request_id_is_a_404(rig: Rig) -> None:
    await answered(rig)
    r = await call(rig, "POST", "/v1/feedback", json={"request_id": "no-such-request", "rating": 1})
    assert r.status_code == 404, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert (err["type"], err["code"], err["param"]) == ("invalid_request_error", "request_not_found", "request_id")
    await rig.app.state.feedback.store.flush()
    assert db_rows(rig, "SELECT count(*) FROM feedback") == [(0,)]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"request_id": "r", "rating": 0}, "rating"),
        ({"request_id": "r", "rating": 2}, "rating"),
        ({"request_id": "r", "rating": "1"}, "rating"),
        ({"request_id": "r", "rating": True}, "rating"),
        ({"request_id": "r", "rating": 1.0}, "rating"),
        ({"request_id": "r", "rating": None}, "rating"),
        ({"request_id": "r"}, "rating"),
        ({"rating": 1}, "request_id"),
        ({"request_id": 5, "rating": 1}, "request_id"),
        ({"request_id": "", "rating": 1}, "request_id"),
        ({"request_id": "r", "rating": 1, "comment": 3}, "comment"),
        ({"request_id": "r", "rating": 1, "correction": ["x"]}, "correction"),
        ({"request_id": "r", "rating": 1, "stars": 5}, "stars"),
        ([1, 2], None),
    ],
)
async def test_a_bad_body_is_a_400(rig: Rig, body: Any, param: str | None) -> None:
    r = await call(rig, "POST", "/v1/feedback", json=body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["param"] == param, err


@pytest.mark.parametrize("raw", [b"", b"{not json", b'{"request_id": "r", "rating": 1'])
async def test_malformed_json_is_a_400(rig: Rig, raw: bytes) -> None:
    r = await call(rig, "POST", "/v1/feedback", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "invalid_json"


async def test_a_second_rating_is_kept_as_history_and_the_latest_counts(rig: Rig) -> None:
    rid = await answered(rig)
    ids = []
    for rating in (1, -1):
        r = await call(rig, "POST", "/v1/feedback", json={"request_id": rid, "rating": rating})
        assert r.status_code == 200
        ids.append(r.json()["feedback_id"])
    assert ids[0] != ids[1]
    await rig.app.state.feedback.store.flush()
    history = db_rows(rig, f"SELECT id, rating FROM feedback WHERE request_id = '{rid}' ORDER BY time")
    assert history == [(ids[0], 1), (ids[1], -1)]
    latest = db_rows(rig, f"SELECT rating FROM feedback WHERE request_id = '{rid}' ORDER BY time DESC LIMIT 1")
    assert latest == [(-1,)]


async def test_feedback_needs_the_api_key(stores: Callable[..., Any]) -> None:
    rig = make_rig(store=await stores(), api_keys=["sk-1"])
    r = await call(rig, "POST", "/v1/feedback", json={"request_id": "r", "rating": 1})
    assert r.status_code == 401
    assert r.json()["error"]["type"] == "authentication_error"
    rid = await answered(rig, {"Authorization": "Bearer sk-1"})
    r = await call(rig, "POST", "/v1/feedback", json={"request_id": rid, "rating": 1},
                   headers={"Authorization": "Bearer sk-1"})
    assert r.status_code == 200


async def test_without_a_store_feedback_is_a_503() -> None:
    rig = make_rig()
    r = await call(rig, "POST", "/v1/feedback", json={"request_id": "r", "rating": 1})
    assert r.status_code == 503
    assert r.json()["error"]["code"] == "store_unavailable"


async def test_while_the_database_is_down_recent_requests_still_take_feedback(tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("")  # the database's directory cannot be made
    store = Store(StoreSettings(url=f"sqlite:///{blocker / 'x.db'}", spill_path=str(tmp_path / "s"), retry_s=60))
    await store.start()
    try:
        rig = make_rig(store=store)
        rid = await answered(rig)
        r = await call(rig, "POST", "/v1/feedback", json={"request_id": rid, "rating": 1})
        assert r.status_code == 200, r.text  # known to this process: recorded, spilled meanwhile
        r = await call(rig, "POST", "/v1/feedback", json={"request_id": "elsewhere", "rating": 1})
        assert r.status_code == 503, r.text  # cannot tell: the client should retry
        assert r.json()["error"]["code"] == "store_unavailable"
        await store.flush()
        spilled = spilled_bytes(tmp_path)
        assert spilled.count(b'"table":"requests"') == 1 and spilled.count(b'"table":"feedback"') == 1
    finally:
        await store.close()
