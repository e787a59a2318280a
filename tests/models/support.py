"""Test doubles for the helper and engine tests: a scripted ``Engine`` and the fake upstream as a subprocess."""

from __future__ import annotations

import asyncio
import os
import selectors
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from models.engine import ChatTurn, Completion, Delta, EngineError, FinishReason, SamplingParams

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Call:
    """One call a ``ScriptedEngine`` received."""

    method: str
    prompt: str | tuple[ChatTurn, ...]
    params: SamplingParams


@dataclass
class ScriptedEngine:
    """An ``Engine`` that answers with chosen texts, in order (the last one repeats), and records its calls.

    Streams split each reply into ``pieces`` (given) or characters-per-word pieces, then a finishing delta.
    """

    replies: list[str] = field(default_factory=lambda: ["ok"])
    finish_reason: FinishReason = "stop"
    delay_s: float = 0.0
    pieces: list[str] | None = None
    error: Exception | None = None
    name: str = "scripted"
    calls: list[Call] = field(default_factory=list)
    streams_closed: int = 0
    started: bool = False

    def _reply(self) -> str:
        index = min(len(self.calls) - 1, len(self.replies) - 1)
        return self.replies[index]

    async def _answer(self, method: str, prompt: str | tuple[ChatTurn, ...], params: SamplingParams) -> str:
        self.calls.append(Call(method, prompt, params))
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.error is not None:
            raise self.error
        return self._reply()

    async def complete(self, prompt: str, params: SamplingParams) -> list[Completion]:
        text = await self._answer("complete", prompt, params)
        return [Completion(text, self.finish_reason, len(prompt.split()), len(text.split()))]

    async def chat(self, messages: Sequence[ChatTurn], params: SamplingParams) -> list[Completion]:
        text = await self._answer("chat", tuple(messages), params)
        return [Completion(text, self.finish_reason, 1, len(text.split()))]

    async def _stream(self, method: str, prompt: str | tuple[ChatTurn, ...], params: SamplingParams
                      ) -> AsyncIterator[Delta]:
        try:
            text = await self._answer(method, prompt, params)
            pieces = self.pieces if self.pieces is not None else [w for w in text.split(" ")]
            if self.pieces is None:
                pieces = [p + (" " if i < len(pieces) - 1 else "") for i, p in enumerate(pieces)]
            for piece in pieces:
                await asyncio.sleep(0)
                yield Delta(piece)
            yield Delta("", finish_reason=self.finish_reason, prompt_tokens=1, completion_tokens=len(pieces))
        finally:
            self.streams_closed += 1

    def stream_complete(self, prompt: str, params: SamplingParams) -> AsyncIterator[Delta]:
        return self._stream("stream_complete", prompt, params)

    def stream_chat(self, messages: Sequence[ChatTurn], params: SamplingParams) -> AsyncIterator[Delta]:
        return self._stream("stream_chat", tuple(messages), params)

    async def start(self) -> None:
        self.started = True

    async def close(self) -> None:
        self.started = False


class BrokenEngine(ScriptedEngine):
    """A scripted engine whose calls fail with ``EngineError``."""

    def __init__(self) -> None:
        super().__init__(error=EngineError("helper exploded"))


class FakeUpstream:
    """``python -m tests.fakes.upstream`` as a subprocess on a free port."""

    def __init__(self, name: str, *args: str) -> None:
        self.name = name
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.fakes.upstream", "--port", "0", "--name", name, *args],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.port = self._wait_ready(timeout_s=20.0)
        self.base = f"http://127.0.0.1:{self.port}"
        self.v1 = f"{self.base}/v1"

    def _wait_ready(self, timeout_s: float) -> int:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout_s
        seen = b""
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            while time.monotonic() < deadline:
                if not sel.select(timeout=0.1):
                    continue
                line = self.proc.stdout.readline()
                if not line:
                    break
                seen += line
                if line.startswith(b"READY "):
                    return int(line.split()[1])
        self.stop()
        raise RuntimeError(f"fake upstream {self.name} did not start: {seen.decode(errors='replace')}")

    def requests(self) -> list[dict[str, Any]]:
        """What the fake received (``GET /_fake/requests``): method, path, headers, body, raw."""
        got: list[dict[str, Any]] = httpx.get(f"{self.base}/_fake/requests", timeout=5).json()
        return got

    def reset(self) -> None:
        httpx.post(f"{self.base}/_fake/reset", timeout=5).raise_for_status()

    def stats(self) -> dict[str, int]:
        got: dict[str, int] = httpx.get(f"{self.base}/_fake/stats", timeout=5).json()
        return got

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
