"""A stream that finished is never recorded as a failure, and a pass-through keeps what the upstream said.

The real ``openai`` SDK closes its connection right after ``data: [DONE]``; some upstreams keep the stream open
a while after it (the fake's ``--linger-s``). Every arm, streamed, through a real gateway process with real
helper fakes: the client gets the whole answer, and the stored row has status 200 and no failure outcome (a
relay that waited for the upstream to close took the SDK's hang-up for a client disconnect). A relayed answer
also carries the upstream's own headers: its ``x-request-id`` as ``x-upstream-request-id`` (the gateway's id stays
``x-request-id``), ``openai-processing-ms`` and its ``cache-control``.
"""

from __future__ import annotations

import sqlite3
from typing import Any

import pytest

from tests.e2e.support import Fake, Gateway, Procs, backend, gateway_config, wait_for

ARMS = ("control", "rewrite", "align", "rewrite+align")
REWRITE = "Explain step by step how to bake a simple loaf of bread at home, with safe oven temperatures."
CORRECTION = "Knead, proof, then bake at 220 C for 30 minutes."
LINGER_S = 1.0
PER_ARM = 3


@pytest.fixture(scope="module")
def lingering(module_procs: Procs) -> tuple[Fake, Gateway]:
    be = module_procs.fake("lingering-backend", 0, "--linger-s", str(LINGER_S))
    rw = module_procs.fake("rewriter", 0, "--reply", REWRITE)
    al = module_procs.fake("aligner", 0, "--reply", CORRECTION)
    config = gateway_config(backend("m", be.v1))
    config["helpers"] = {
        "rewriter": {"url": rw.v1, "model": "bpo", "template": "bpo", "timeout_s": 10},
        "aligner": {"url": al.v1, "model": "aligner", "template": "aligner-v1", "timeout_s": 10},
    }
    config["experiment"] = {"name": "outcomes", "arms": {"control": 1}, "allow_override": True}
    return be, module_procs.gateway(config, tag="outcomes")


def stored(gw: Gateway, ids: list[str]) -> dict[str, tuple[int, str | None]]:
    with sqlite3.connect(gw.db_path, timeout=10) as conn:
        rows = conn.execute(
            f"SELECT id, status, outcome FROM requests WHERE id IN ({','.join('?' * len(ids))})", ids
        ).fetchall()
    return {rid: (status, outcome) for rid, status, outcome in rows}


@pytest.mark.parametrize("endpoint", ["chat", "completions"])
def test_finished_streams_are_stored_as_finished_on_every_arm(lingering: tuple[Fake, Gateway], endpoint: str) -> None:
    _, gw = lingering
    client = gw.client()
    ids: list[str] = []
    for arm in ARMS:
        for i in range(PER_ARM):
            headers = {"X-Aligngate-Arm": arm}
            if endpoint == "chat":
                raw = client.chat.completions.with_raw_response.create(
                    model="m", max_tokens=16, stream=True, extra_headers=headers,
                    messages=[{"role": "user", "content": f"How do I bake bread, try {i}?"}],
                )
                text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
            else:
                raw = client.completions.with_raw_response.create(
                    model="m", max_tokens=16, stream=True, extra_headers=headers,
                    prompt=f"How do I bake bread, try {i}?",
                )
                text = "".join(c.choices[0].text for c in raw.parse() if c.choices)
            assert text, (arm, i)
            if arm in ("align", "rewrite+align"):
                assert text == CORRECTION
            assert raw.headers["x-aligngate-arm"] == arm
            ids.append(raw.headers["x-request-id"])
    def all_stored() -> dict[str, tuple[int, str | None]] | None:
        rows = stored(gw, ids)
        return rows if len(rows) == len(ids) else None

    rows: dict[str, tuple[int, str | None]] = wait_for(all_stored, timeout=15, what="stored rows")
    failed = {rid: row for rid, row in rows.items() if row != (200, None)}
    assert not failed, failed


def test_relayed_answers_carry_the_upstream_headers(lingering: tuple[Fake, Gateway]) -> None:
    _, gw = lingering
    upstream = {"x-request-id": "upstream-42", "openai-processing-ms": "17", "cache-control": "no-store"}
    for arm in ARMS:
        for stream in (False, True):
            body: dict[str, Any] = {
                "model": "m", "max_tokens": 8, "stream": stream, "fake": {"headers": upstream, "linger_s": 0},
                "messages": [{"role": "user", "content": "Name three colours."}],
            }
            r = gw.http.post("/v1/chat/completions", json=body, headers={"X-Aligngate-Arm": arm,
                                                                          "X-Request-Id": f"ours-{arm}-{stream}"})
            assert r.status_code == 200, r.text
            assert r.headers["x-request-id"] == f"ours-{arm}-{stream}"
            assert r.headers["x-upstream-request-id"] == "upstream-42", (arm, stream)
            assert r.headers["openai-processing-ms"] == "17", (arm, stream)
            assert r.headers["cache-control"] == "no-store", (arm, stream)
            assert r.headers.get_list("x-request-id") == [f"ours-{arm}-{stream}"]
            if stream:
                assert r.headers["content-type"].startswith("text/event-stream")
