"""train.data.teacher against a real fake OpenAI chat server (aiohttp.web on a free port) with canned answers."""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from train.data.teacher import (
    TEACHER_INSTRUCTION,
    TeacherItem,
    construct_bpo_pairs,
    parse_optimized_prompt,
    teacher_items,
    teacher_messages,
)

GOOD = "[Comparison]\nThe good response is clear.\n[Optimized Prompt]\n{prompt}\n[End]"


@dataclass
class FakeTeacher:
    """Canned teacher answers keyed by the original instruction found in the request."""

    url: str = ""
    requests: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    attempts: Counter[str] = field(default_factory=Counter)
    in_flight: int = 0
    max_in_flight: int = 0

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append(body)
        self.headers.append(dict(request.headers))
        content = body["messages"][0]["content"]
        match = re.search(r"\[Original Instruction\]\n(.*?)\n\n\[Good Response\]", content, re.S)
        instruction = match.group(1) if match else ""
        self.attempts[instruction] += 1
        attempt = self.attempts[instruction]
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(0.02)
            return self._answer(instruction, attempt)
        finally:
            self.in_flight -= 1

    def _answer(self, instruction: str, attempt: int) -> web.Response:
        if instruction == "flaky prompt" and attempt == 1:
            return web.json_response({"error": {"message": "boom"}}, status=500)
        if instruction == "rate limited prompt" and attempt == 1:
            return web.json_response({"error": {"message": "slow down"}}, status=429, headers={"Retry-After": "0"})
        if instruction == "broken prompt":
            return web.json_response({"error": {"message": "down"}}, status=503)
        if instruction == "forbidden prompt":
            return web.json_response({"error": {"message": "no"}}, status=400)
        if instruction == "garbage prompt":
            return web.Response(text="not json", content_type="text/plain")
        if instruction == "malformed prompt":
            text = "The good answer is better. Optimized Instruction: please answer well"
        elif instruction == "verbose prompt":
            text = GOOD.format(prompt=" ".join(["very"] * 20 + ["long"] * 10))  # 30 words for 3: 10x
        else:
            text = GOOD.format(prompt=f"Please answer carefully and in detail: {instruction}")
        return web.json_response(
            {
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            }
        )


@pytest.fixture
async def teacher() -> AsyncIterator[FakeTeacher]:
    fake = FakeTeacher()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", fake.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    fake.url = f"http://{host}:{port}/v1"
    try:
        yield fake
    finally:
        await runner.cleanup()


def _row(prompt: str) -> dict[str, str]:
    return {"prompt": prompt, "good_res": f"A thorough answer to {prompt}.", "bad_res": "Meh."}


async def test_construct_keeps_good_pairs_and_counts_every_drop(teacher: FakeTeacher) -> None:
    rows = [
        _row("explain photosynthesis simply"),
        _row("malformed prompt"),
        _row("verbose prompt"),
        _row("flaky prompt"),
        _row("broken prompt"),
        _row("rate limited prompt"),
        _row("forbidden prompt"),
        _row("garbage prompt"),
    ]
    pairs, stats = await construct_bpo_pairs(
        rows, teacher.url, "teacher-model", api_key="sk-test", concurrency=3, timeout_s=5, backoff_s=0.01
    )
    assert pairs == [
        {
            "prompt": "explain photosynthesis simply",
            "optimized_prompt": "Please answer carefully and in detail: explain photosynthesis simply",
        },
        {"prompt": "flaky prompt", "optimized_prompt": "Please answer carefully and in detail: flaky prompt"},
        {
            "prompt": "rate limited prompt",
            "optimized_prompt": "Please answer carefully and in detail: rate limited prompt",
        },
    ]
    assert stats.asked == 8 and stats.kept == 3
    assert dict(stats.dropped) == {"parse_failure": 2, "ratio": 1, "http_error": 2}
    assert teacher.attempts["flaky prompt"] == 2  # 500, then success
    assert teacher.attempts["rate limited prompt"] == 2  # 429 with Retry-After: 0, then success
    assert teacher.attempts["broken prompt"] == 3  # one try and two retries
    assert teacher.attempts["forbidden prompt"] == 1  # 400 is not retried
    assert stats.retries == 4
    assert any("HTTP 503" in e for e in stats.errors) and any("HTTP 400" in e for e in stats.errors)
    summary = stats.as_dict()
    assert summary["dropped"] == {"parse_failure": 2, "ratio": 1, "http_error": 2}
    # The request: model, our instruction as one user message, the key as a bearer token.
    body = teacher.requests[0]
    assert body["model"] == "teacher-model" and body["max_tokens"] == 1024
    assert len(body["messages"]) == 1 and body["messages"][0]["role"] == "user"
    assert "[Optimized Prompt]" in body["messages"][0]["content"]
    assert all(h.get("Authorization") == "Bearer sk-test" for h in teacher.headers)
    assert teacher.max_in_flight <= 3


async def test_concurrency_is_bounded(teacher: FakeTeacher) -> None:
    rows = [_row(f"question number {i}") for i in range(12)]
    pairs, stats = await construct_bpo_pairs(rows, teacher.url + "/", "m", concurrency=2, timeout_s=5)
    assert stats.kept == 12 and [p["prompt"] for p in pairs] == [f"question number {i}" for i in range(12)]
    assert teacher.max_in_flight == 2
    assert all("Authorization" not in h for h in teacher.headers)


async def test_timeouts_and_unreachable_servers_are_http_errors(unused_tcp_port: int) -> None:
    pairs, stats = await construct_bpo_pairs(
        [_row("anything at all")], f"http://127.0.0.1:{unused_tcp_port}/v1", "m", timeout_s=1, backoff_s=0.01
    )
    assert pairs == [] and dict(stats.dropped) == {"http_error": 1} and stats.retries == 2
    assert "ConnectError" in stats.errors[0]


async def test_slow_teacher_times_out() -> None:
    release = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        await release.wait()
        return web.json_response({})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", slow)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        pairs, stats = await construct_bpo_pairs(
            [_row("x y z")], f"http://{host}:{port}/v1", "m", timeout_s=0.1, retries=1, backoff_s=0.01
        )
    finally:
        release.set()
        await runner.cleanup()
    assert pairs == [] and dict(stats.dropped) == {"http_error": 1} and stats.retries == 1
    assert "Timeout" in stats.errors[0]


async def test_preference_rows_are_accepted(teacher: FakeTeacher) -> None:
    rows: list[dict[str, object]] = [
        {"prompt": "how do tides work", "chosen": "The moon's gravity...", "rejected": "Water moves."},
        {
            "prompt": [
                {"role": "user", "content": "I like astronomy."},
                {"role": "assistant", "content": "Great!"},
                {"role": "user", "content": "what is a pulsar"},
            ],
            "chosen": [{"role": "assistant", "content": "A rotating neutron star."}],
            "rejected": [{"role": "assistant", "content": "A star."}],
        },
    ]
    pairs, _ = await construct_bpo_pairs(rows, teacher.url, "m", backoff_s=0.01)
    assert [p["prompt"] for p in pairs] == ["how do tides work", "what is a pulsar"]
    second = teacher.requests[1]["messages"][0]["content"]
    first = teacher.requests[0]["messages"][0]["content"]
    multi = second if "pulsar" in second else first
    assert "[Conversation So Far]\nHuman: I like astronomy.\n\nAssistant: Great!" in multi


def test_invalid_rows_are_rejected_up_front() -> None:
    with pytest.raises(ValueError, match="row 1"):
        teacher_items([_row("ok"), {"prompt": "no responses"}])
    with pytest.raises(ValueError, match="concurrency"):
        asyncio.run(construct_bpo_pairs([], "http://127.0.0.1:1/v1", "m", concurrency=0))


def test_teacher_message_text() -> None:
    (message,) = teacher_messages(TeacherItem(instruction="Sort {these} words", good="G", bad="B"))
    assert message["content"] == TEACHER_INSTRUCTION.format(
        context_block="", instruction="Sort {these} words", good="G", bad="B"
    )
    assert (
        "[Original Instruction]\nSort {these} words\n\n[Good Response]\nG\n\n[Bad Response]\nB\n\n"
        in (message["content"])
    )
    assert message["content"].endswith("[Optimized Prompt]\n(the optimized prompt)\n[End]")


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("analysis\n[Optimized Prompt]\nDo X well.\n[End]", "Do X well."),
        ("[optimized prompt] Do X. [END] trailing", "Do X."),
        ('[Optimized Prompt]\n"Quoted prompt."\n[End]', "Quoted prompt."),
        ("[Optimized Prompt]\n```text\nFenced\nprompt\n```\n[End]", "Fenced\nprompt"),
        ("I will write it under [Optimized Prompt] below.\n[Optimized Prompt]\nReal one\n[End]", "Real one"),
        ("[Optimized Prompt]\nno end marker", None),
        ("no markers at all", None),
        ("[Optimized Prompt]\n  \n[End]", None),
        ("[Optimized Prompt]\n(the optimized prompt)\n[End]", None),
    ],
)
def test_parse_optimized_prompt(answer: str, expected: str | None) -> None:
    assert parse_optimized_prompt(answer) == expected
