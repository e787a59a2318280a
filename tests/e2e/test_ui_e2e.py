"""The web pages' JSON read API (``/ui/api/*``) and ``POST /v1/preferences`` in real gateway processes over a fake
upstream and a real SQLite store: the API key, ``Cache-Control: no-store``, the exact JSON shapes, the trace
filters and pagination, 400s naming the parameter, 404s, ``server.ui: false``, a disabled store, and a pairwise
preference's round trip (POST, the store, ``/ui/api/trace``, ``aligngate data export``)."""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from gateway.store import schema
from tests.e2e.support import (
    ROOT,
    Fake,
    Gateway,
    Procs,
    assert_openai_error,
    backend,
    clean_env,
    gateway_config,
    metric_sum,
    wait_for,
)

KEY = "sk-ui"
AUTH = {"Authorization": f"Bearer {KEY}"}
EXPERIMENT = "ui-e2e"
LONG = "Why " + "very " * 80 + "long?"


@dataclass
class Seeded:
    gw: Gateway
    #: Request ids by label, as sent (oldest first).
    ids: dict[str, str]


def chat(gw: Gateway, text: Any, arm: str, **extra: Any) -> str:
    body = {"model": "m", "messages": [{"role": "user", "content": text}], "max_tokens": 8, **extra}
    r = gw.http.post("/v1/chat/completions", json=body, headers={**AUTH, "X-Aligngate-Arm": arm})
    assert r.status_code in (200, 500), r.text
    rid: str = r.headers["x-request-id"]
    return rid


def api(gw: Gateway, path: str, params: dict[str, Any] | None = None, *, auth: bool = True) -> httpx.Response:
    r = gw.http.get(path, params=params, headers=AUTH if auth else {})
    assert r.headers["cache-control"] == "no-store", (path, r.headers)
    assert r.headers["content-type"].startswith("application/json")
    return r


def traces(gw: Gateway, **params: Any) -> dict[str, Any]:
    r = api(gw, "/ui/api/traces", params)
    assert r.status_code == 200, r.text
    data: dict[str, Any] = r.json()
    return data


@pytest.fixture(scope="module")
def seeded(module_procs: Procs) -> Seeded:
    up = module_procs.fake("ui-up")
    aligner = module_procs.fake("ui-aligner", 0, "--reply", "Paris is the capital of France, on the Seine.")
    config = gateway_config(backend("m", up.v1), api_keys=[KEY])
    config["helpers"] = {"aligner": {"url": aligner.v1, "model": "aligner", "template": "aligner-v1",
                                     "timeout_s": 10}}
    config["experiment"] = {"name": EXPERIMENT, "arms": {"control": 1, "align": 1}}
    config["store"] = {"flush_interval_s": 0.05}
    gw = module_procs.gateway(config, tag="ui")
    ids: dict[str, str] = {}
    ids["c1"] = chat(gw, "first question", "control")
    ids["a1"] = chat(gw, "What is the capital of France?", "align")
    ids["c2"] = chat(gw, "What is the capital of France?", "control")
    ids["err"] = chat(gw, "break please", "control", fake={"mode": "error", "status": 500})
    ids["a2"] = chat(gw, LONG, "align")
    ids["c3"] = chat(gw, [{"type": "text", "text": "parts"}, {"type": "text", "text": "joined"}], "control")
    for rating in (1, -1):  # two ratings of c2: the latest (-1) counts
        r = gw.http.post("/v1/feedback", json={"request_id": ids["c2"], "rating": rating}, headers=AUTH)
        assert r.status_code == 200, r.text
        time.sleep(0.01)
    wait_for(lambda: len(traces(gw, limit=100)["data"]) == len(ids), 10, what="every request stored")
    # the two ratings may be written in two of the store's batches: wait for both, not only for the requests
    wait_for(lambda: len(api(gw, "/ui/api/trace", {"id": ids["c2"]}).json()["feedback"]) == 2, 10,
             what="both ratings stored")
    return Seeded(gw, ids)


def test_every_ui_route_needs_the_api_key(seeded: Seeded) -> None:
    for path in ("/ui/api/info", "/ui/api/traces", "/ui/api/trace", "/ui/api/experiment"):
        r = api(seeded.gw, path, auth=False)
        assert_openai_error(r, 401, "missing_api_key", "authentication_error")
        r = seeded.gw.http.get(path, headers={"Authorization": "Bearer wrong"})
        assert_openai_error(r, 401, "invalid_api_key")
        assert r.headers["cache-control"] == "no-store"


def test_info(seeded: Seeded) -> None:
    r = api(seeded.gw, "/ui/api/info")
    assert r.status_code == 200, r.text
    assert r.json() == {"experiment": EXPERIMENT, "arms": ["control", "align"], "models": ["m"], "auth": True,
                        "store": True, "log_bodies": True}
    assert_openai_error(api(seeded.gw, "/ui/api/info", {"x": "1"}), 400, "invalid_value")
    assert seeded.gw.http.head("/ui/api/info", headers=AUTH).status_code == 200


def test_traces_newest_first_with_their_fields(seeded: Seeded) -> None:
    ids = seeded.ids
    page = traces(seeded.gw)
    assert page["next_before"] is None
    rows = page["data"]
    assert [row["id"] for row in rows] == list(reversed(ids.values()))
    by_id = {row["id"]: row for row in rows}
    c2 = by_id[ids["c2"]]
    assert set(c2) == {"id", "time", "arm", "arm_forced", "model", "endpoint", "stream", "status", "outcome",
                       "latency_ms", "rewriter_ms", "aligner_ms", "rating", "prompt"}
    assert (c2["arm"], c2["arm_forced"], c2["model"], c2["endpoint"], c2["stream"], c2["status"]) == (
        "control", True, "m", "chat", False, 200)
    assert c2["rating"] == -1 and c2["prompt"] == "What is the capital of France?"
    assert isinstance(c2["time"], float) and c2["latency_ms"] > 0 and c2["aligner_ms"] is None
    assert by_id[ids["a1"]]["aligner_ms"] is not None and by_id[ids["a1"]]["rating"] is None
    assert by_id[ids["a2"]]["prompt"] == LONG[:200] and len(LONG) > 200
    assert by_id[ids["c3"]]["prompt"] == "parts\njoined"
    assert by_id[ids["err"]]["status"] == 500


def test_trace_filters(seeded: Seeded) -> None:
    ids = seeded.ids
    gw = seeded.gw

    def got(**params: Any) -> list[str]:
        return [row["id"] for row in traces(gw, **params)["data"]]

    assert got(arm="align") == [ids["a2"], ids["a1"]]
    assert got(arm="control", status="error") == [ids["err"]]
    assert got(status="500") == [ids["err"]]
    assert ids["err"] not in got(status="ok") and len(got(status="ok")) == 5
    assert got(rated="yes") == [ids["c2"]]
    assert ids["c2"] not in got(rated="no") and len(got(rated="no")) == 5
    assert got(model="m", status="200", arm="align") == [ids["a2"], ids["a1"]]
    assert got(model="other") == []
    assert got(arm="", model="", status="", rated="") == list(reversed(ids.values()))  # empty: not given


def test_pagination_walks_every_trace_once(seeded: Seeded) -> None:
    seen: list[str] = []
    before: float | None = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 2}
        if before is not None:
            params["before"] = before
        page = traces(seeded.gw, **params)
        pages += 1
        assert len(page["data"]) <= 2
        seen += [row["id"] for row in page["data"]]
        before = page["next_before"]
        if before is None:
            break
        assert before == page["data"][-1]["time"]
    assert seen == list(reversed(seeded.ids.values())) and pages == 3
    older = traces(seeded.gw, before=traces(seeded.gw, limit=1)["next_before"])
    assert [row["id"] for row in older["data"]] == seen[1:]


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"arm": "bogus"}, "arm"),
        ({"status": "fine"}, "status"),
        ({"status": "99"}, "status"),
        ({"status": "600"}, "status"),
        ({"rated": "maybe"}, "rated"),
        ({"limit": "0"}, "limit"),
        ({"limit": "501"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"before": "nan"}, "before"),
        ({"before": "inf"}, "before"),
        ({"before": "yesterday"}, "before"),
        ({"sort": "asc"}, "sort"),
        ([("limit", "5"), ("limit", "6")], "limit"),
    ],
)
def test_bad_trace_parameters_are_400s_naming_them(seeded: Seeded, params: Any, param: str) -> None:
    err = assert_openai_error(api(seeded.gw, "/ui/api/traces", params), 400, type_="invalid_request_error")
    assert err["param"] == param, err


def test_one_trace_whole(seeded: Seeded) -> None:
    rid = seeded.ids["c2"]
    r = api(seeded.gw, "/ui/api/trace", {"id": rid})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"request", "feedback", "shadow", "preferences"}
    request = body["request"]
    assert set(request) == set(schema.REQUEST_COLUMNS) - {"user_key_hash"}
    assert (request["id"], request["experiment"], request["arm"], request["arm_forced"]) == (
        rid, EXPERIMENT, "control", True)
    assert request["messages"] == [{"role": "user", "content": "What is the capital of France?"}]
    assert request["final_answer"] and request["final_answer"] == request["raw_answer"]
    assert [(f["request_id"], f["rating"]) for f in body["feedback"]] == [(rid, 1), (rid, -1)]  # oldest first
    assert set(body["feedback"][0]) == set(schema.FEEDBACK_COLUMNS)
    assert body["shadow"] is None


def test_unknown_and_missing_trace_ids(seeded: Seeded) -> None:
    err = assert_openai_error(api(seeded.gw, "/ui/api/trace", {"id": "no-such-id"}), 404, "request_not_found")
    assert err["param"] == "id"
    err = assert_openai_error(api(seeded.gw, "/ui/api/trace"), 400, "missing_required_parameter")
    assert err["param"] == "id"


def test_a_preference_round_trip(seeded: Seeded, tmp_path: Path) -> None:
    """POST /v1/preferences → the store → /ui/api/trace of both requests → ``aligngate data export``."""
    gw, a, b = seeded.gw, seeded.ids["a1"], seeded.ids["c2"]
    r = gw.http.post("/v1/preferences", json={"a": a, "b": b, "preferred": "a"})
    assert_openai_error(r, 401)
    r = gw.http.post("/v1/preferences", json={"a": a, "b": "nope", "preferred": "a"}, headers=AUTH)
    assert assert_openai_error(r, 404, "request_not_found")["param"] == "b"
    r = gw.http.post("/v1/preferences", json={"a": a, "b": b, "preferred": "a", "left": "b", "comment": "right"},
                     headers=AUTH)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert set(answer) == {"ok", "preference_id", "a", "b"} and (answer["ok"], answer["a"], answer["b"]) == (
        True, a, b)

    def stored() -> list[dict[str, Any]]:
        prefs: list[dict[str, Any]] = api(gw, "/ui/api/trace", {"id": b}).json()["preferences"]
        return prefs

    prefs = wait_for(stored, 10, what="the preference stored")
    assert prefs == api(gw, "/ui/api/trace", {"id": a}).json()["preferences"]
    assert len(prefs) == 1
    p = prefs[0]
    assert set(p) == set(schema.PREFERENCE_COLUMNS)
    assert (p["id"], p["request_a"], p["request_b"], p["arm_a"], p["arm_b"], p["preferred"], p["left"],
            p["comment"]) == (answer["preference_id"], a, b, "align", "control", "a", "b", "right")
    assert metric_sum(gw.metrics(), "aligngate_preferences_total", preferred_arm="align") == 1

    out = tmp_path / "prefs.jsonl"
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "data", "export", "--kind", "preferences", "--store",
         f"sqlite:///{gw.db_path}", "--experiment", EXPERIMENT, "--out", str(out)],
        cwd=ROOT, env=clean_env(), capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    rows = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    pairwise = [row for row in rows if row["source"] == "pairwise"]
    trace_a = api(gw, "/ui/api/trace", {"id": a}).json()["request"]
    trace_b = api(gw, "/ui/api/trace", {"id": b}).json()["request"]
    assert pairwise == [{
        "prompt": [{"role": "user", "content": "What is the capital of France?"}],
        "chosen": [{"role": "assistant", "content": trace_a["final_answer"]}],
        "rejected": [{"role": "assistant", "content": trace_b["final_answer"]}],
        "request_id": a, "source": "pairwise", "rejected_request_id": b, "preference_id": answer["preference_id"],
    }]
    assert "pairwise: 1 written" in done.stdout + done.stderr


def test_the_experiment_report(seeded: Seeded) -> None:
    r = api(seeded.gw, "/ui/api/experiment")
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["experiment"], body["since"]) == (EXPERIMENT, None)
    # every request here was forced (X-Aligngate-Arm), which an A/B report leaves out: nothing to report
    assert body["report"] is None
    later = api(seeded.gw, "/ui/api/experiment", {"since": "2999-01-01"}).json()
    assert later["since"] == pytest.approx(32472144000.0) and later["report"] is None
    assert_openai_error(api(seeded.gw, "/ui/api/experiment", {"since": "soon"}), 400, "invalid_value")


def test_the_experiment_report_of_assigned_requests(seeded: Seeded) -> None:
    gw = seeded.gw
    rids = []
    for i in range(4):
        body = {"model": "m", "messages": [{"role": "user", "content": f"assigned {i}"}], "max_tokens": 4}
        r = gw.http.post("/v1/chat/completions", json=body, headers={**AUTH, "X-Aligngate-User": f"u{i}"})
        assert r.status_code == 200
        rids.append(r.headers["x-request-id"])
    wait_for(lambda: api(gw, "/ui/api/experiment").json()["report"] is not None, 10, what="a report")
    report = api(gw, "/ui/api/experiment").json()["report"]
    assert report["experiment"] == EXPERIMENT and report["include_forced"] is False
    assert sum(arm["requests"] for arm in report["arms"]) == 4
    assert report["version"] == 1 and report["srm"]["status"] in ("ok", "mismatch", "not_run")
    assert set(report["arms"][0]) >= {"arm", "requests", "errors", "latency_p50_ms", "rated", "thumbs_up", "vs_control"}


# ------------------------------------------------------------------------------------ other configurations


@pytest.fixture(scope="module")
def fake(module_procs: Procs) -> Fake:
    return module_procs.fake("ui-plain")


def test_server_ui_false_removes_the_routes(module_procs: Procs, fake: Fake) -> None:
    config = gateway_config(backend("m", fake.v1), ui=False)
    gw = module_procs.gateway(config, tag="ui-off")
    for path in ("/ui/api/info", "/ui/api/traces", "/ui/api/trace", "/ui/api/experiment"):
        assert_openai_error(gw.http.get(path), 404)
    assert gw.http.get("/v1/models").status_code == 200
    r = gw.http.post("/v1/preferences", json={"a": "x", "b": "y", "preferred": "a"})
    assert_openai_error(r, 404, "request_not_found")  # the write API stays


def test_without_a_store_reads_are_503s(module_procs: Procs, fake: Fake) -> None:
    config = gateway_config(backend("m", fake.v1))
    config["store"] = {"enabled": False, "url": "sqlite:///unused.db"}
    gw = module_procs.gateway(config, tag="ui-nostore")
    info = api(gw, "/ui/api/info", auth=False).json()
    assert info == {"experiment": "default", "arms": ["control"], "models": ["m"], "auth": False, "store": False,
                    "log_bodies": True}
    for path, params in (("/ui/api/traces", None), ("/ui/api/trace", {"id": "x"}), ("/ui/api/experiment", None)):
        assert_openai_error(api(gw, path, params, auth=False), 503, "store_unavailable", "server_error")
