"""Sentence-by-sentence correction end to end (``helpers.aligner.stream: sentence``): real ``aligngate serve``
processes streaming to the ``openai`` SDK while a fake backend generates word by word, and fake aligner servers
that correct each sentence they are sent.

The aligner fakes echo the sentence from Stream Aligner's template (``--echo``) as ``Fixed: <sentence>``, taking
``--whole-token-delay-s`` per token to answer, as a generating server would; ``flaky`` also fails on any request
that contains ``BOOM`` (``--fail-if``), which the backend's second sentence does.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import pytest

from tests.e2e.support import Fake, Gateway, Procs, backend, gateway_config, metric_sum, sse_data, wait_for

MODEL = "m"
QUESTION = "Tell me about {bread} | baking."
SENTENCES = [
    "First sentence is right here. ", "Second has a BOOM inside. ", "Third one, e.g. with 3.14 in it! ",
    "Fourth comes after Dr. Smith. ", "Fifth sentence is short. ", "Sixth and last one.",
]
REPLY = "".join(SENTENCES)
FIXED = [f"Fixed: {s.strip()}" for s in SENTENCES]
SERVED = " ".join(FIXED)
TOKEN_DELAY_S = 0.05  # the backend: 20 tokens a second, about 1.5 s for the 30 words of REPLY
ECHO = r"##Answer_Last_Sentence: (.*) \| ##Your_Revision: "
STREAM = ("<start_of_turn>user\n##Question: {question} | ##Answer_Prefix: {prefix} | ##Answer_Last_Sentence: {last}"
          " | ##Your_Revision: <end_of_turn>\n<start_of_turn>model")


@dataclass
class SentenceStack:
    backend: Fake
    aligner: Fake
    flaky: Fake
    gw: Gateway  # sentence mode, on_error skip
    skip: Gateway  # the flaky aligner, on_error skip
    fail: Gateway  # the flaky aligner, on_error fail


@pytest.fixture(scope="module")
def ss(module_procs: Procs) -> SentenceStack:
    be = module_procs.fake("backend", 0, "--reply", REPLY, "--token-delay-s", str(TOKEN_DELAY_S))
    al = module_procs.fake("aligner", 0, "--echo", ECHO, "--reply", "Fixed: {echo}", "--whole-token-delay-s", "0.02")
    flaky = module_procs.fake("flaky", 0, "--echo", ECHO, "--reply", "Fixed: {echo}", "--fail-if", "BOOM",
                              "--whole-token-delay-s", "0.02")

    def gw(aligner: Fake, on_error: str, tag: str) -> Gateway:
        config = gateway_config(backend(MODEL, be.v1))
        config["helpers"] = {"aligner": {"url": aligner.v1, "model": "stream-aligner", "stream": "sentence",
                                         "on_error": on_error, "timeout_s": 10}}
        config["experiment"] = {"arms": {"align": 1}, "allow_override": True}
        return module_procs.gateway(config, tag=tag)

    return SentenceStack(be, al, flaky, gw(al, "skip", "sentence"), gw(flaky, "skip", "sentence-skip"),
                         gw(flaky, "fail", "sentence-fail"))


@pytest.fixture(autouse=True)
def _reset(ss: SentenceStack) -> Iterator[None]:
    for fake in (ss.backend, ss.aligner, ss.flaky):
        fake.reset()
    yield


def raw_stream(gw: Gateway, **fields: Any) -> tuple[list[str], httpx.Response]:
    body = {"model": MODEL, "messages": [{"role": "user", "content": QUESTION}], "stream": True, **fields}
    r = gw.http.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    return sse_data(r.content), r


def text_of(datas: list[str]) -> str:
    out = []
    for data in datas:
        if data == "[DONE]":
            continue
        event = json.loads(data)
        for choice in event.get("choices") or []:
            out.append(choice["delta"].get("content") or "")
    return "".join(out)


# ---------------------------------------------------------------- the SDK and the wire


def test_the_sdk_streams_each_corrected_sentence_and_the_trace(ss: SentenceStack) -> None:
    with ss.gw.client() as client:
        stream = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": QUESTION}], stream=True,
            stream_options={"include_usage": True}, extra_headers={"X-Aligngate-Trace": "1"},
        )
        chunks = list(stream)
    contents = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert contents == [f"{f} " for f in FIXED[:-1]] + [FIXED[-1]]  # one chunk per corrected sentence
    assert "".join(contents) == SERVED
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    # every sentence corrected: usage counts the corrections by the aligner's count, the backend's 30 aside
    extra = (last.usage.model_extra or {})["aligngate"]
    assert extra["backend_completion_tokens"] == 30
    assert last.usage.completion_tokens == extra["aligner"]["completion_tokens"] == len(SERVED.split())
    trace = (last.model_extra or {})["aligngate"]
    assert trace["arm"] == "align" and trace["original_content"] == REPLY
    assert [(s["original"], s["corrected"], s["skipped"]) for s in trace["sentences"]] == [
        (s, f"{f} " if s.endswith(" ") else f, None) for s, f in zip(SENTENCES, FIXED, strict=True)
    ]
    # Stream Aligner's template on the wire, character for character, with the corrected prefix
    posts = ss.aligner.posts()
    assert [p["path"] for p in posts] == ["/v1/completions"] * 6
    assert posts[0]["body"]["prompt"] == STREAM.format(question=QUESTION, prefix="", last=SENTENCES[0].strip())
    assert posts[2]["body"]["prompt"] == STREAM.format(question=QUESTION, prefix=" ".join(FIXED[:2]),
                                                        last=SENTENCES[2].strip())
    assert all(p["body"]["temperature"] == 0.0 for p in posts)
    [sent] = ss.backend.posts()
    assert sent["body"]["stream"] is True and sent["body"]["stream_options"] == {"include_usage": True}


def test_the_first_sentence_arrives_while_the_backend_is_still_generating(ss: SentenceStack) -> None:
    with ss.gw.client() as client:
        start = time.perf_counter()
        first: float | None = None
        for chunk in client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": QUESTION}], stream=True,
        ):
            if first is None and chunk.choices and chunk.choices[0].delta.content:
                first = time.perf_counter() - start
        total = time.perf_counter() - start
    assert first is not None
    # the backend alone needs 30 tokens at 50 ms = 1.5 s; the first sentence is 5 of them
    assert total >= 1.4
    assert first < total / 2, (first, total)


def test_the_store_keeps_the_whole_raw_answer_and_the_whole_served_one(ss: SentenceStack) -> None:
    datas, r = raw_stream(ss.gw)
    assert datas[-1] == "[DONE]" and text_of(datas) == SERVED
    request_id = r.headers["x-request-id"]

    def row() -> Any:
        with sqlite3.connect(ss.gw.db_path, timeout=10) as conn:
            return conn.execute(
                "SELECT raw_answer, final_answer, aligner_skipped, completion_tokens, stream FROM requests WHERE id=?",
                (request_id,),
            ).fetchone()

    assert wait_for(row, 10, what="the request's row") == (REPLY, SERVED, None, 30, 1)


def test_sentence_metrics(ss: SentenceStack) -> None:
    before = metric_sum(ss.gw.metrics(), "aligngate_aligner_sentences_total", outcome="corrected")
    raw_stream(ss.gw)
    samples = ss.gw.metrics()
    assert metric_sum(samples, "aligngate_aligner_sentences_total", outcome="corrected") - before == 6
    assert metric_sum(samples, "aligngate_aligner_sentence_seconds_count") >= 6


# ---------------------------------------------------------------- failures mid-answer


def test_the_backend_failing_mid_answer(ss: SentenceStack) -> None:
    """Cut after the role chunk and 18 words ("Fourth" included): three sentences are complete, the fourth not."""
    datas, _ = raw_stream(ss.gw, fake={"mode": "cut", "cut_after": 19})
    assert datas[-1] == "[DONE]"
    assert text_of(datas[:-2]) == " ".join(FIXED[:3]) + " "
    error = json.loads(datas[-2])["error"]
    assert error["code"] == "upstream_stream_broken"
    assert len(ss.aligner.posts()) == 3


def test_the_aligner_failing_mid_answer_with_skip_keeps_the_original_sentences(ss: SentenceStack) -> None:
    with ss.skip.client() as client:
        chunks = list(client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": QUESTION}], stream=True,
            extra_headers={"X-Aligngate-Trace": "1"},
        ))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == f"{FIXED[0]} " + "".join(SENTENCES[1:])
    trace = (chunks[-1].model_extra or {})["aligngate"]
    assert [s["skipped"] for s in trace["sentences"]] == [None, "failed:error"] + ["after_failure"] * 4
    assert len(ss.flaky.posts()) == 2
    assert metric_sum(ss.skip.metrics(), "aligngate_helper_failures_total", helper="aligner") >= 1


def test_the_aligner_failing_mid_answer_with_fail_ends_with_an_error_frame(ss: SentenceStack) -> None:
    datas, _ = raw_stream(ss.fail)
    assert datas[-1] == "[DONE]"
    assert text_of(datas[:-2]) == f"{FIXED[0]} "
    error = json.loads(datas[-2])["error"]
    assert error["code"] == "helper_failed"
    with ss.fail.client() as client, pytest.raises(openai.APIError):
        list(client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": QUESTION}],
                                            stream=True))


# ---------------------------------------------------------------- the client going away


def test_a_client_disconnect_mid_stream_cancels_the_backend_and_the_aligner(ss: SentenceStack) -> None:
    backend_before = ss.backend.stats()
    aligner_before = ss.aligner.stats()
    body = {"model": MODEL, "messages": [{"role": "user", "content": QUESTION}], "stream": True}
    with httpx.Client(timeout=30) as http, http.stream("POST", f"{ss.gw.v1}/chat/completions", json=body) as r:
        request_id = r.headers["x-request-id"]
        lines = r.iter_lines()  # kept: an abandoned iterator closes the connection at once
        for line in lines:
            if "Fixed:" in line:  # the first corrected sentence is here
                break
        wait_for(lambda: len(ss.aligner.posts()) >= 2, 10, what="the second sentence's correction")
        assert ss.backend.stats()["streams_aborted"] == backend_before["streams_aborted"]  # still generating
    # closing the response hangs up mid-stream
    wait_for(lambda: ss.backend.stats()["streams_aborted"] > backend_before["streams_aborted"], 10,
             what="the backend stream aborted")
    wait_for(lambda: ss.aligner.stats()["replies_aborted"] > aligner_before["replies_aborted"], 10,
             what="the aligner call in flight aborted")
    assert "outcome=client_disconnected" in ss.gw.wait_access_line(request_id)
