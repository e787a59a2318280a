"""gateway/pipeline/shadow.py: shadow mode through the gateway's routes, middleware and a real trace store
(SQLite in ``tmp_path``), with the fake helper engines and backend of ``support.py``.

Sampled assigned-control requests get a background run of the helpers after their response has been sent;
the response is the same bytes as without shadow mode; the run lands in ``shadow_runs``; failures, saturation
and shutdown are counted and never reach the client.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from aiohttp import web
from prometheus_client import REGISTRY

from gateway.app import create_app
from gateway.config import ExperimentSettings, HelpersSettings, Settings, ShadowSettings, StoreSettings
from gateway.context import Capture, RequestContext
from gateway.pipeline.helpers import Helpers
from gateway.pipeline.shadow import ShadowRunner, sample_point
from gateway.store.store import Store
from models.aligner import Aligner
from models.engine import EngineTimeout
from tests.gateway.conftest import StartUpstream
from tests.gateway.pipeline.support import (
    CORRECTED,
    MODEL,
    REWRITTEN,
    TOOL_ARGUMENTS,
    AlignerEngine,
    RewriterEngine,
    Rig,
    answer_of,
    make_rig,
)

QUESTION = "how to bake bread"
ORIGINAL = f"Answer 0: {QUESTION}"  # the fake backend's answer to QUESTION
ALL_ARMS = {"control": 1, "rewrite": 1, "align": 1, "rewrite+align": 1}
ON = ShadowSettings(share=1.0)


def chat_body(**fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "system", "content": "Be brief."},
                                         {"role": "user", "content": QUESTION}], **fields}


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def runs(outcome: str) -> float:
    return sample("aligngate_shadow_runs_total", outcome=outcome)


class Counts:
    """Metric deltas since creation (the registry is shared by every test)."""

    def __init__(self, *names: tuple[str, dict[str, str]]) -> None:
        self.names = names
        self.before = [sample(n, **labels) for n, labels in names]

    def delta(self) -> list[float]:
        return [sample(n, **labels) - b for (n, labels), b in zip(self.names, self.before, strict=True)]


@pytest.fixture
async def rig_for(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """``await rig_for(shadow=..., **make_rig_kw)``: a rig with its own real store (``store_kw``)."""
    stores: list[Store] = []

    async def make(store_kw: dict[str, Any] | None = None, **kw: Any) -> Rig:
        store = Store(StoreSettings(url=f"sqlite:///{tmp_path / f's{len(stores)}.db'}", **(store_kw or {})))
        await store.start()
        stores.append(store)
        kw.setdefault("shadow", ON)
        return make_rig(store=store, **kw)

    yield make
    for store in stores:
        await store.close()


@asynccontextmanager
async def client(rig: Rig) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=rig.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw", timeout=10) as http:
        yield http


async def post(rig: Rig, body: dict[str, Any], headers: dict[str, str] | None = None,
               path: str = "/v1/chat/completions") -> httpx.Response:
    async with client(rig) as http:
        r = await http.post(path, json=body, headers=headers or {})
        await r.aread()
    return r


def store_of(rig: Rig) -> Store:
    store: Store = rig.app.state.feedback.store
    return store


async def shadow_rows(rig: Rig) -> dict[str, dict[str, Any]]:
    """Every ``shadow_runs`` row by request id, once the runs in flight have ended and the store is written."""
    if rig.shadow is not None:
        await rig.shadow.wait_idle(5)
    store = store_of(rig)
    await store.flush()
    with sqlite3.connect(str(store.url.database)) as conn:
        conn.row_factory = sqlite3.Row
        return {r["id"]: dict(r) for r in conn.execute("SELECT * FROM shadow_runs")}


async def request_row(rig: Rig, rid: str) -> dict[str, Any]:
    store = store_of(rig)
    await store.flush()
    with sqlite3.connect(str(store.url.database)) as conn:
        conn.row_factory = sqlite3.Row
        found = conn.execute("SELECT * FROM requests WHERE id = ?", (rid,)).fetchone()
    assert found is not None
    return dict(found)


def db_bytes(rig: Rig) -> bytes:
    """The database file and its WAL, as bytes (to show what is not in them)."""
    db = str(store_of(rig).url.database)
    return Path(db).read_bytes() + Path(f"{db}-wal").read_bytes()


# ---------------------------------------------------------------------------------------------- sampling


def runner_for(share: float, arm: str, helpers: Helpers) -> ShadowRunner:
    """A runner for sampling alone (no store, helper objects that are never called)."""
    no_store: Any = None
    return ShadowRunner(ShadowSettings(share=share, arm=arm), helpers, no_store, experiment="e")


def test_sampling_is_by_request_id_reproducible_and_matches_the_share() -> None:
    rewriter: Any = object()
    aligner: Any = object()
    ids = [uuid.UUID(int=i).hex for i in range(20_000)]
    for share in (0.1, 0.5):
        picked = [runner_for(share, "rewrite", Helpers(rewriter, None)).sampled(i) for i in ids]
        assert abs(sum(picked) / len(ids) - share) < 0.01
        assert picked == [sample_point(i) < share for i in ids]  # the same decision every time, everywhere
    never, always = (runner_for(share, "align", Helpers(None, aligner)) for share in (0.0, 1.0))
    assert not any(never.sampled(i) for i in ids) and all(always.sampled(i) for i in ids)
    with pytest.raises(ValueError, match="needs helpers"):
        runner_for(1.0, "rewrite+align", Helpers(rewriter, None))


async def test_share_zero_never_runs_the_helpers(rig_for: Callable[..., Any]) -> None:
    rig = await rig_for(shadow=ShadowSettings(share=0.0), arms=ALL_ARMS)
    assert rig.shadow is None and rig.app.state.inference.shadow is None
    for user in range(8):
        r = await post(rig, chat_body(), {"X-Aligngate-User": f"u{user}"})
        assert r.status_code == 200
    assert await shadow_rows(rig) == {}
    control_only = await rig_for(shadow=ShadowSettings(share=0.0))
    for _ in range(3):
        assert (await post(control_only, chat_body())).status_code == 200
    assert control_only.rewriter is not None and control_only.aligner is not None
    assert control_only.rewriter.calls == [] and control_only.aligner.calls == []
    assert await shadow_rows(control_only) == {}


async def test_share_one_runs_for_every_assigned_control_request_and_nothing_else(
    rig_for: Callable[..., Any],
) -> None:
    rig = await rig_for(arms=ALL_ARMS)
    arms: dict[str, str] = {}
    for user in range(40):
        r = await post(rig, chat_body(), {"X-Aligngate-User": f"user-{user}"})
        assert r.status_code == 200
        arms[r.headers["x-request-id"]] = r.headers["x-aligngate-arm"]
    forced: list[str] = []
    for arm in ALL_ARMS:  # a forced arm, control included, is not the experiment's traffic
        r = await post(rig, chat_body(), {"X-Aligngate-Arm": arm, "X-Aligngate-User": "user-0"})
        forced.append(r.headers["x-request-id"])
    rows = await shadow_rows(rig)
    control = {rid for rid, arm in arms.items() if arm == "control"}
    assert len(control) >= 3 and len(control) < len(arms)  # the users spread over the arms
    assert set(rows) == control
    assert not set(rows) & set(forced)
    for row in rows.values():
        assert (row["experiment"], row["arm"], row["skipped"]) == ("default", "rewrite+align", None)
        assert row["rewritten_prompt"] == REWRITTEN and row["corrected"] == CORRECTED + ORIGINAL


async def test_a_partial_share_runs_exactly_the_sampled_request_ids(rig_for: Callable[..., Any]) -> None:
    rig = await rig_for(shadow=ShadowSettings(share=0.5, arm="align"))
    ids = [f"req-{i}" for i in range(30)]
    for rid in ids:
        assert (await post(rig, chat_body(), {"X-Request-Id": rid})).status_code == 200
    rows = await shadow_rows(rig)
    assert set(rows) == {rid for rid in ids if sample_point(rid) < 0.5}
    assert 0 < len(rows) < len(ids)


# ---------------------------------------------------------------------------------------------- the response


@pytest.mark.parametrize("trace", [False, True])
@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("endpoint", ["chat", "completions"])
async def test_the_response_is_byte_identical_with_and_without_shadow_mode(
    rig_for: Callable[..., Any], endpoint: str, stream: bool, trace: bool
) -> None:
    off = await rig_for(shadow=ShadowSettings(share=0.0))
    on = await rig_for(shadow=ON)
    if endpoint == "chat":
        path, body = "/v1/chat/completions", chat_body(stream=stream, n=2)
    else:
        path, body = "/v1/completions", {"model": MODEL, "prompt": QUESTION, "stream": stream}
    if stream:
        body["stream_options"] = {"include_usage": True}
    headers = {"X-Request-Id": f"same-{endpoint}-{stream}-{trace}", **({"X-Aligngate-Trace": "1"} if trace else {})}
    answers = [await post(rig, body, headers, path) for rig in (off, on)]
    assert [a.status_code for a in answers] == [200, 200]
    assert answers[0].content == answers[1].content
    assert b"aligngate" in answers[0].content if trace else b"aligngate" not in answers[0].content

    def comparable(r: httpx.Response) -> list[tuple[str, str]]:
        return [(k, v) for k, v in r.headers.multi_items() if k != "x-aligngate-overhead-ms"]

    assert comparable(answers[0]) == comparable(answers[1])
    rows = await shadow_rows(on)
    assert set(rows) == {headers["X-Request-Id"]}  # it did run
    assert rows[headers["X-Request-Id"]]["corrected"] == CORRECTED + ORIGINAL
    assert await shadow_rows(off) == {}


# ---------------------------------------------------------------------------------------------- what is stored


@pytest.mark.parametrize("stream", [False, True])
async def test_a_control_request_gets_its_shadow_output_stored(rig_for: Callable[..., Any], stream: bool) -> None:
    rig = await rig_for()
    body = chat_body(stream=stream)
    r = await post(rig, body)
    assert r.status_code == 200 and r.headers["x-aligngate-arm"] == "control"
    rid = r.headers["x-request-id"]
    row = (await shadow_rows(rig))[rid]
    assert row["arm"] == "rewrite+align" and row["skipped"] is None
    assert row["rewritten_prompt"] == REWRITTEN and row["rewriter_skipped"] is None
    assert row["corrected"] == CORRECTED + ORIGINAL and row["aligner_skipped"] is None
    assert row["rewriter_ms"] >= 0 and row["aligner_ms"] >= 0
    assert row["time"] >= time.time() - 60
    # the rewriter saw the user's messages; the aligner (the user's question, the answer as served)
    assert rig.rewriter is not None and rig.aligner is not None
    assert len(rig.rewriter.calls) == 1 and QUESTION in str(rig.rewriter.calls[0].prompt)
    assert [answer_of(c.prompt) for c in rig.aligner.calls] == [ORIGINAL]
    assert len(rig.backend.requests) == 1  # the backend is never called again with the rewritten prompt
    # the request's own row is as without shadow mode: the answer served, no helper
    req = await request_row(rig, rid)
    assert (req["arm"], req["final_answer"], req["rewritten_prompt"], req["aligner_ms"]) == (
        "control", ORIGINAL, None, None)


async def test_completions_and_the_single_helper_arms(rig_for: Callable[..., Any]) -> None:
    rewrite = await rig_for(shadow=ShadowSettings(share=1, arm="rewrite"), with_aligner=False)
    r = await post(rewrite, {"model": MODEL, "prompt": QUESTION}, path="/v1/completions")
    row = (await shadow_rows(rewrite))[r.headers["x-request-id"]]
    assert (row["arm"], row["rewritten_prompt"], row["corrected"], row["aligner_ms"]) == (
        "rewrite", REWRITTEN, None, None)
    align = await rig_for(shadow=ShadowSettings(share=1, arm="align"), with_rewriter=False)
    r = await post(align, {"model": MODEL, "prompt": QUESTION, "stream": True}, path="/v1/completions")
    row = (await shadow_rows(align))[r.headers["x-request-id"]]
    assert (row["arm"], row["rewritten_prompt"], row["corrected"], row["rewriter_ms"]) == (
        "align", None, CORRECTED + ORIGINAL, None)
    r = await post(rewrite, {"model": MODEL, "prompt": [QUESTION, "x"]}, path="/v1/completions")
    row = (await shadow_rows(rewrite))[r.headers["x-request-id"]]
    assert row["rewriter_skipped"] == "unsupported_prompt" and row["rewritten_prompt"] is None


async def test_an_answer_without_text_is_not_corrected(rig_for: Callable[..., Any]) -> None:
    rig = await rig_for()
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    r = await post(rig, chat_body(tools=tools, tool_choice="required"))
    assert TOOL_ARGUMENTS in r.json()["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"]
    row = (await shadow_rows(rig))[r.headers["x-request-id"]]
    assert row["aligner_skipped"] == "no_answer" and row["corrected"] is None and row["aligner_ms"] is None
    assert row["rewritten_prompt"] == REWRITTEN
    assert rig.aligner is not None and rig.aligner.calls == []


@pytest.mark.parametrize("stream", [False, True])
async def test_log_bodies_off_keeps_the_texts_out_but_still_corrects_the_whole_answer(
    rig_for: Callable[..., Any], stream: bool
) -> None:
    rig = await rig_for(store_kw={"log_bodies": False})
    r = await post(rig, chat_body(stream=stream))
    row = (await shadow_rows(rig))[r.headers["x-request-id"]]
    assert row["rewritten_prompt"] is None and row["corrected"] is None
    assert row["rewriter_skipped"] is None and row["aligner_skipped"] is None and row["aligner_ms"] >= 0
    assert rig.aligner is not None
    assert [answer_of(c.prompt) for c in rig.aligner.calls] == [ORIGINAL]  # every streamed piece was kept
    raw = db_bytes(rig)
    assert REWRITTEN.encode() not in raw and CORRECTED.encode() not in raw


# ---------------------------------------------------------------------------------------------- failures


async def test_helper_failures_in_shadow_never_reach_the_client_and_are_counted_apart(
    rig_for: Callable[..., Any],
) -> None:
    rig = await rig_for(rewriter=RewriterEngine(error=EngineTimeout("slow")),
                        aligner=AlignerEngine(error=RuntimeError("a bug in an engine")),
                        aligner_on_error="fail")  # the live policy does not apply to shadow runs
    counts = Counts(
        ("aligngate_shadow_runs_total", {"outcome": "helper_failed"}),
        ("aligngate_shadow_helper_failures_total", {"helper": "rewriter", "reason": "timeout"}),
        ("aligngate_shadow_helper_failures_total", {"helper": "aligner", "reason": "error"}),
        ("aligngate_helper_failures_total", {"helper": "rewriter", "reason": "timeout"}),
        ("aligngate_helper_failures_total", {"helper": "aligner", "reason": "error"}),
    )
    for stream in (False, True):
        r = await post(rig, chat_body(stream=stream))
        assert r.status_code == 200
        assert "bread" in r.text and "CORRECTED" not in r.text and "error" not in r.text
    rows = await shadow_rows(rig)
    assert len(rows) == 2
    for row in rows.values():
        assert (row["rewriter_skipped"], row["aligner_skipped"]) == ("failed:timeout", "failed:error")
        assert row["rewritten_prompt"] is None and row["corrected"] is None and row["skipped"] is None
    assert counts.delta() == [2, 2, 2, 0, 0]


async def test_a_failed_request_gets_no_shadow_run(rig_for: Callable[..., Any]) -> None:
    rig = await rig_for()
    counts = Counts(("aligngate_shadow_runs_total", {"outcome": "request_failed"}))
    r = await post(rig, chat_body(fake={"status": 503}))
    assert r.status_code == 503
    r = await post(rig, chat_body(stream=True, fake={"status": 500}))
    assert r.status_code == 500
    assert await shadow_rows(rig) == {}
    assert rig.rewriter is not None and rig.aligner is not None
    assert rig.rewriter.calls == [] and rig.aligner.calls == []
    assert counts.delta() == [2]


# ---------------------------------------------------------------------------------------------- bounds and shutdown


async def test_saturation_skips_and_counts_and_shutdown_cancels_cleanly(
    rig_for: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    aligner = AlignerEngine(block=True)  # every shadow correction hangs until cancelled
    rig = await rig_for(shadow=ShadowSettings(share=1, arm="align", max_concurrent=2), aligner=aligner)
    assert rig.shadow is not None
    counts = Counts(*[("aligngate_shadow_runs_total", {"outcome": o})
                      for o in ("saturated", "cancelled", "shutdown", "completed")])
    started = time.perf_counter()
    ids = []
    for _ in range(4):
        r = await post(rig, chat_body())
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == ORIGINAL
        ids.append(r.headers["x-request-id"])
    assert time.perf_counter() - started < 2  # the blocked shadow runs delayed no response
    assert rig.shadow.in_flight == 2
    assert sample("aligngate_shadow_in_flight") == 2
    await rig.shadow.close(timeout_s=0.05)
    assert rig.shadow.in_flight == 0 and sample("aligngate_shadow_in_flight") == 0
    assert aligner.cancelled == 2
    r = await post(rig, chat_body())  # after shutdown began: skipped
    assert r.status_code == 200
    ids.append(r.headers["x-request-id"])
    rows = await shadow_rows(rig)
    assert [rows[i]["skipped"] for i in ids] == ["cancelled", "cancelled", "saturated", "saturated", "shutdown"]
    assert all(rows[i]["corrected"] is None for i in ids)
    assert counts.delta() == [2, 2, 1, 0]
    assert not [rec for rec in caplog.records if rec.levelno >= logging.ERROR]


async def test_shutdown_waits_for_runs_in_flight(rig_for: Callable[..., Any]) -> None:
    rig = await rig_for(aligner=AlignerEngine(delay_s=0.2))
    assert rig.shadow is not None
    r = await post(rig, chat_body(stream=True))
    assert rig.shadow.in_flight == 1
    await rig.shadow.close()
    assert rig.shadow.in_flight == 0
    row = (await shadow_rows(rig))[r.headers["x-request-id"]]
    assert row["skipped"] is None and row["corrected"] == CORRECTED + ORIGINAL and row["aligner_ms"] >= 150


class ListStore:
    """A ``ShadowStore`` that keeps what it is given."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        self.shadow: list[dict[str, Any]] = []

    def submit(self, ctx: RequestContext, status: int, duration_s: float, overhead_s: float) -> None:
        self.requests.append(ctx.request_id)

    def submit_shadow(self, row: dict[str, Any]) -> None:
        self.shadow.append(row)


async def test_a_run_cancelled_before_it_started_is_still_recorded() -> None:
    store = ListStore()
    engine = AlignerEngine()
    aligner = Aligner(engine, "aligner-v2")
    runner = ShadowRunner(ShadowSettings(share=1, arm="align"), Helpers(None, aligner), store, experiment="e")
    gauge = sample("aligngate_shadow_in_flight")
    ctx = RequestContext(request_id="r1", started=time.perf_counter(), model=MODEL, arm="control")
    ctx.capture = Capture(store, "e", "chat", True, request_body=orjson.dumps(chat_body()))
    runner.attach(ctx.capture, orjson.dumps(chat_body()), True)
    assert ctx.capture.sink is runner
    runner.submit(ctx, 200, 0.01, 0.001)
    assert store.requests == ["r1"] and runner.in_flight == 1
    for task in list(runner._tasks):
        task.cancel()  # before its first step
    await runner.close()
    assert runner.in_flight == 0 and sample("aligngate_shadow_in_flight") == gauge
    assert [(r["id"], r["skipped"]) for r in store.shadow] == [("r1", "cancelled")]
    assert engine.calls == []  # it never ran


async def test_concurrent_requests_each_get_one_run(rig_for: Callable[..., Any]) -> None:
    rig = await rig_for(shadow=ShadowSettings(share=1, max_concurrent=64), aligner=AlignerEngine(delay_s=0.01))
    async with client(rig) as http:
        answers = await asyncio.gather(*[
            http.post("/v1/chat/completions", json=chat_body(stream=i % 2 == 1)) for i in range(20)])
    assert all(a.status_code == 200 for a in answers)
    rows = await shadow_rows(rig)
    assert set(rows) == {a.headers["x-request-id"] for a in answers}
    assert {r["corrected"] for r in rows.values()} == {CORRECTED + ORIGINAL}


# ---------------------------------------------------------------------------------------------- the app


async def test_the_app_wires_shadow_mode_and_waits_for_it_at_shutdown(
    tmp_path: Path, start_upstream: StartUpstream
) -> None:
    """``create_app`` with remote helpers: the shadow run happens after the response and is written before the
    store closes."""

    async def chat(request: web.Request) -> web.Response:
        return web.json_response({"id": "c", "object": "chat.completion", "created": 1, "model": "m", "choices": [
            {"index": 0, "message": {"role": "assistant", "content": ORIGINAL}, "finish_reason": "stop"}]})

    async def helper(request: web.Request) -> web.Response:
        prompt = (await request.json())["prompt"]
        await asyncio.sleep(0.1)
        text = REWRITTEN if "prompt engineer" in prompt else "A better answer."
        return web.json_response({"id": "h", "object": "text_completion", "created": 1, "model": "h",
                                  "choices": [{"index": 0, "text": text, "finish_reason": "stop"}]})

    up = await start_upstream({"POST /v1/chat/completions": chat, "POST /v1/completions": helper})
    db = tmp_path / "app.db"
    helper_cfg = {"url": up.url, "model": "h"}
    settings = Settings.model_validate({
        "backends": [{"name": "m", "urls": [up.url]}],
        "helpers": HelpersSettings.model_validate({"rewriter": helper_cfg, "aligner": helper_cfg}).model_dump(),
        "experiment": ExperimentSettings(shadow=ShadowSettings(share=1)).model_dump(),
        "store": {"url": f"sqlite:///{db}"},
    })
    app = create_app(settings)
    async with app.lifespan():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as http:
            r = await http.post("/v1/chat/completions", json=chat_body())
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == ORIGINAL
        assert app.state.inference.shadow.in_flight == 1  # the helpers are still working after the response
    with sqlite3.connect(db) as conn:  # the lifespan's end waited for the run, then the store wrote it
        conn.row_factory = sqlite3.Row
        rows = [dict(x) for x in conn.execute("SELECT * FROM shadow_runs")]
    assert len(rows) == 1 and rows[0]["id"] == r.headers["x-request-id"]
    assert (rows[0]["rewritten_prompt"], rows[0]["corrected"]) == (REWRITTEN, "A better answer.")
