"""POST /v1/preferences through the app: a pairwise preference between two requests of the store, recorded with
both arms; 404 naming ``a`` or ``b`` for unknown ids, 400 for the same id twice and bad bodies; counted in
aligngate_preferences_total{preferred_arm}."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from gateway import metrics
from tests.gateway.feedback.test_feedback import answered, call, db_rows
from tests.gateway.pipeline.support import Rig, make_rig


@pytest.fixture
async def rig(stores: Callable[..., Any]) -> Rig:
    return make_rig(store=await stores(flush_interval_s=0.05), arms={"control": 1, "align": 1})


def count(preferred_arm: str) -> float:
    return metrics.PREFERENCES.labels(preferred_arm)._value.get()  # type: ignore[no-any-return]


async def forced(rig: Rig, arm: str) -> str:
    return await answered(rig, {"X-Aligngate-Arm": arm})


async def test_a_preference_is_recorded_with_both_arms(rig: Rig) -> None:
    a, b = await forced(rig, "align"), await forced(rig, "control")
    before = count("align")
    r = await call(rig, "POST", "/v1/preferences",
                   json={"a": a, "b": b, "preferred": "a", "left": "b", "comment": "clearer"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"ok", "preference_id", "a", "b"}
    assert body["ok"] is True and (body["a"], body["b"]) == (a, b) and body["preference_id"]
    assert count("align") == before + 1
    await rig.app.state.feedback.store.flush()
    assert db_rows(rig, 'SELECT id, request_a, request_b, arm_a, arm_b, preferred, "left", comment FROM preferences') \
        == [(body["preference_id"], a, b, "align", "control", "a", "b", "clearer")]


async def test_b_and_tie_are_counted_by_the_preferred_arm(rig: Rig) -> None:
    a, b = await forced(rig, "align"), await forced(rig, "control")
    control, tie = count("control"), count("tie")
    for preferred in ("b", "tie"):
        r = await call(rig, "POST", "/v1/preferences", json={"a": a, "b": b, "preferred": preferred})
        assert r.status_code == 200, r.text
    assert (count("control"), count("tie")) == (control + 1, tie + 1)
    await rig.app.state.feedback.store.flush()
    assert db_rows(rig, 'SELECT preferred, "left", comment FROM preferences ORDER BY time') == [
        ("b", None, None), ("tie", None, None)]


async def test_a_request_of_another_process_is_found_in_the_database(stores: Callable[..., Any]) -> None:
    other = await stores()
    rig = make_rig(store=await stores(), arms={"rewrite": 1})
    a = await answered(make_rig(store=other, arms={"rewrite": 1}))
    await other.flush()
    b = await answered(rig)
    r = await call(rig, "POST", "/v1/preferences", json={"a": a, "b": b, "preferred": "a"})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("missing", ["a", "b"])
async def test_an_unknown_request_is_a_404_naming_it(rig: Rig, missing: str) -> None:
    known = await answered(rig)
    body = {"a": known, "b": known, "preferred": "tie", missing: "no-such-request"}
    t = time.perf_counter()
    r = await call(rig, "POST", "/v1/preferences", json=body)
    assert r.status_code == 404, r.text
    assert time.perf_counter() - t < 2
    err = r.json()["error"]
    assert (err["type"], err["code"], err["param"]) == ("invalid_request_error", "request_not_found", missing)
    await rig.app.state.feedback.store.flush()
    assert db_rows(rig, "SELECT count(*) FROM preferences") == [(0,)]


async def test_both_unknown_names_a(rig: Rig) -> None:
    r = await call(rig, "POST", "/v1/preferences", json={"a": "x1", "b": "x2", "preferred": "a"})
    assert r.status_code == 404 and r.json()["error"]["param"] == "a"


async def test_the_same_request_twice_is_a_400(rig: Rig) -> None:
    rid = await answered(rig)
    r = await call(rig, "POST", "/v1/preferences", json={"a": rid, "b": rid, "preferred": "a"})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert (err["type"], err["param"]) == ("invalid_request_error", "b")


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"a": "x", "b": "y", "preferred": "c"}, "preferred"),
        ({"a": "x", "b": "y", "preferred": "A"}, "preferred"),
        ({"a": "x", "b": "y", "preferred": 1}, "preferred"),
        ({"a": "x", "b": "y", "preferred": None}, "preferred"),
        ({"a": "x", "b": "y"}, "preferred"),
        ({"b": "y", "preferred": "a"}, "a"),
        ({"a": "x", "preferred": "a"}, "b"),
        ({"a": 5, "b": "y", "preferred": "a"}, "a"),
        ({"a": "", "b": "y", "preferred": "a"}, "a"),
        ({"a": "x", "b": "y", "preferred": "a", "left": "tie"}, "left"),
        ({"a": "x", "b": "y", "preferred": "a", "left": "left"}, "left"),
        ({"a": "x", "b": "y", "preferred": "a", "comment": 3}, "comment"),
        ({"a": "x", "b": "y", "preferred": "a", "rating": 1}, "rating"),
        (["a", "b"], None),
    ],
)
async def test_a_bad_body_is_a_400(rig: Rig, body: Any, param: str | None) -> None:
    r = await call(rig, "POST", "/v1/preferences", json=body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["param"] == param, err


async def test_preferences_need_the_api_key(stores: Callable[..., Any]) -> None:
    rig = make_rig(store=await stores(), api_keys=["sk-1"])
    r = await call(rig, "POST", "/v1/preferences", json={"a": "x", "b": "y", "preferred": "a"})
    assert r.status_code == 401
    assert r.json()["error"]["type"] == "authentication_error"


async def test_without_a_store_a_preference_is_a_503() -> None:
    rig = make_rig()
    r = await call(rig, "POST", "/v1/preferences", json={"a": "x", "b": "y", "preferred": "a"})
    assert r.status_code == 503
    assert r.json()["error"]["code"] == "store_unavailable"
