"""``python -m train.data``: build and teacher commands write JSONL that the loaders read back."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from train.data.cli import main
from train.data.loaders import load_any, load_preferences_jsonl, load_prompt_completion, load_unpaired

ROOT = Path(__file__).resolve().parents[2]


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, Any]:
    assert main(list(argv)) == 0
    summary: dict[str, Any] = json.loads(capsys.readouterr().out)
    return summary


def test_build_aligner_writes_sft_rows_that_reload(
    tmp_path: Path, fixtures: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "aligner.jsonl"
    summary = _run(capsys, "build", "--kind", "aligner", "--input", str(fixtures / "hh_small.jsonl"), "--out", str(out))
    assert summary["input_kind"] == "hh-rlhf" and summary["loaded"] == 4 and summary["read"] == 10
    assert summary["skipped"]["empty_final_answer"] == 2
    assert summary["rows"] == 5  # 4 corrections + round(0.2 * 4 / 0.8) = 1 copy
    reloaded = load_any(out)
    assert reloaded.kind == "prompt-completion" and len(reloaded) == 5
    for row in reloaded:
        assert isinstance(row["prompt"], str) and row["prompt"].startswith("BEGINNING OF CONVERSATION: USER: Edit")
        assert row["prompt"].endswith(" ASSISTANT:")


def test_build_aligner_raw_v2_and_eval_split(
    tmp_path: Path, fixtures: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    train, held = tmp_path / "train.jsonl", tmp_path / "eval.jsonl"
    argv = ["build", "--kind", "aligner", "--input", str(fixtures / "prefs_small.jsonl"), "--out", str(train)]
    argv += ["--template", "raw", "--copy-share", "0.5", "--eval-share", "0.5", "--eval-out", str(held)]
    summary = _run(capsys, *argv)
    triplets = load_any(train)
    assert triplets.kind == "aligner"
    held_rows = load_any(held).rows
    # 4 usable pairs: 2 held out (no copies there), 2 for training plus 2 copies (copy share 0.5).
    assert (summary["rows"], summary["eval_rows"]) == (4, 2)
    assert not any(t["answer"] == t["correction"] for t in held_rows)  # copies only on the training side
    assert not {t["question"] for t in triplets} & {t["question"] for t in held_rows}
    v2 = tmp_path / "v2.jsonl"
    _run(
        capsys,
        "build",
        "--kind",
        "aligner",
        "--input",
        str(fixtures / "export_aligner.jsonl"),
        "--out",
        str(v2),
        "--template",
        "aligner-v2",
        "--copy-share",
        "0",
    )
    rows = load_prompt_completion(v2).rows
    assert len(rows) == 2 and all("##Correction:  ASSISTANT:" in str(r["prompt"]) for r in rows)


def test_build_rewriter_kto_sft_dpo(tmp_path: Path, fixtures: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rewriter = tmp_path / "rewriter.jsonl"
    summary = _run(
        capsys, "build", "--kind", "rewriter", "--input", str(fixtures / "bpo_small.json"), "--out", str(rewriter)
    )
    assert summary["rows"] == 4
    rows = load_prompt_completion(rewriter).rows
    assert all(str(r["prompt"]).startswith("[INST] You are an expert prompt engineer.") for r in rows)

    kto = tmp_path / "kto.jsonl"
    summary = _run(capsys, "build", "--kind", "kto", "--input", str(fixtures / "prefs_small.jsonl"), "--out", str(kto))
    unpaired = load_unpaired(kto).rows
    assert summary["rows"] == 8 and [r["label"] for r in unpaired] == [True, False] * 4

    sft = tmp_path / "sft.jsonl"
    _run(capsys, "build", "--kind", "sft", "--input", str(fixtures / "messages_small.jsonl"), "--out", str(sft))
    assert len(load_prompt_completion(sft)) == 2
    _run(capsys, "build", "--kind", "sft", "--input", str(fixtures / "dolly_small.json"), "--out", str(sft))
    assert len(load_prompt_completion(sft)) == 3
    _run(capsys, "build", "--kind", "sft", "--input", str(fixtures / "hh_small.jsonl"), "--out", str(sft))
    assert len(load_prompt_completion(sft)) == 4

    dpo = tmp_path / "dpo.jsonl"
    _run(capsys, "build", "--kind", "dpo", "--input", str(fixtures / "export_preferences.jsonl"), "--out", str(dpo))
    assert load_preferences_jsonl(dpo).rows == load_preferences_jsonl(fixtures / "export_preferences.jsonl").rows


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--kind", "aligner", "--input", "{f}/bpo_small.json", "--template", "bpo"], "unknown template 'bpo'"),
        (["--kind", "kto", "--input", "{f}/messages_small.jsonl"], "expected preference pairs"),
        (["--kind", "rewriter", "--input", "{f}/prefs_small.jsonl"], "expected bpo rows"),
        (["--kind", "sft", "--input", "{f}/prefs_small.jsonl", "--eval-share", "0.1"], "--eval-share needs --eval-out"),
        (["--kind", "sft", "--input", "{f}/prefs_small.jsonl", "--template", "bpo"], "--template applies"),
        (["--kind", "sft", "--input", "{f}/nope.jsonl"], "No such file"),
        (["--kind", "aligner", "--input", "{f}/prefs_small.jsonl", "--copy-share", "2"], "copy_share"),
    ],
)
def test_build_errors_exit_2(
    tmp_path: Path, fixtures: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    args = ["build", *(a.replace("{f}", str(fixtures)) for a in argv), "--out", str(tmp_path / "o.jsonl")]
    assert main(args) == 2
    assert message in capsys.readouterr().err


def test_malformed_input_error_names_file_and_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n{"prompt": "p", "chosen": "a"}\n')
    assert main(["build", "--kind", "dpo", "--input", str(bad), "--out", str(tmp_path / "o.jsonl")]) == 2
    assert f"error: {bad}:line 2: missing key 'rejected'" in capsys.readouterr().err
    assert not (tmp_path / "o.jsonl").exists()


async def test_module_entry_point_runs_teacher_end_to_end(tmp_path: Path, fixtures: Path) -> None:
    """``python -m train.data teacher`` in a real subprocess against a fake OpenAI chat server."""
    seen: list[str] = []

    async def chat(request: web.Request) -> web.Response:
        body = await request.json()
        seen.append(request.headers.get("Authorization", ""))
        content = body["messages"][0]["content"]
        instruction = content.split("[Original Instruction]\n", 1)[1].split("\n\n[Good Response]", 1)[0]
        answer = f"[Comparison]\nfine\n[Optimized Prompt]\nPlease, in detail: {instruction}\n[End]"
        return web.json_response({"choices": [{"index": 0, "message": {"role": "assistant", "content": answer}}]})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    out = tmp_path / "pairs.jsonl"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TEACHER_KEY": "sk-cli"}
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "train.data", "teacher", "--input", str(fixtures / "bpo_small.json"),
            "--base-url", f"http://{host}:{port}/v1", "--model", "t", "--out", str(out),
            "--api-key-env", "TEACHER_KEY", "--limit", "2",
            cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        stdout, stderr = await asyncio.wait_for(proc.communicate(), timeout=30)
    finally:
        await runner.cleanup()
    assert proc.returncode == 0, stderr.decode()
    summary = json.loads(stdout)
    assert summary["asked"] == summary["kept"] == summary["rows"] == 2
    pairs = load_any(out)
    assert pairs.kind == "rewriter" and len(pairs) == summary["kept"]
    assert all(p["optimized_prompt"].startswith("Please, in detail: ") for p in pairs)
    assert seen and all(h == "Bearer sk-cli" for h in seen)
