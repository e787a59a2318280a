"""``python -m gateway eval`` as a real process against real fake upstreams, helpers, judges and gateways:
the in-process target on every arm, reuse of cached answers and verdicts (upstream calls counted), Ctrl-C and
resume, a running gateway over a socket, the shadow-store path, and the exit-2 failures that keep the cache."""

from __future__ import annotations

import json
import time
from pathlib import Path

from tests.e2e.support import Fake, Procs, backend, free_port, gateway_config
from tests.gateway.eval.support import (
    HELPER_REPLY,
    FakeJudge,
    gateway_yaml,
    interrupt,
    prompts_jsonl,
    read_jsonl,
    run_eval,
    start_eval,
    write_yaml,
)
from tests.gateway.report.seed import T0, create_store, insert, req, shadow_run, user

PROMPTS = ["How do I boil an egg?", "Name three rivers in Europe.", "What is a prime number?"]
#: The judge prefers the aligner's answer (the helper's reply) in both orders; everything else is a tie.
ALIGN_WINS = {
    "rules": [{"a": HELPER_REPLY, "reply": "[[A]]"}, {"b": HELPER_REPLY, "reply": "[[B]]"}],
    "default": "[[C]]",
}


def _stack(procs: Procs, tmp_path: Path, *backend_args: str) -> tuple[Fake, Fake, Path, Path]:
    be = procs.fake("backend", 0, *backend_args)
    helper = procs.fake("helper", 0, "--reply", HELPER_REPLY)
    gw = gateway_yaml(tmp_path / "gateway.yaml", be.v1, helper.v1)
    prompts = prompts_jsonl(tmp_path / "prompts.jsonl", PROMPTS)
    return be, helper, gw, prompts


def _judge(procs: Procs, tmp_path: Path) -> FakeJudge:
    judge = FakeJudge(tmp_path, ALIGN_WINS)
    procs._started.append(judge)
    return judge


def test_in_process_target_every_arm_judged_then_reused(procs: Procs, tmp_path: Path) -> None:
    be, helper, gw, prompts = _stack(procs, tmp_path)
    judge = _judge(procs, tmp_path)
    config = write_yaml(
        tmp_path / "eval.yaml",
        {
            "prompts": [{"path": str(prompts), "name": "mine"}],
            "target": {"gateway_config": str(gw)},
            "judges": [{"llm": {"url": judge.v1, "model": "fake-judge"}}],
            "generation": {"max_tokens": 64},
        },
    )
    out = tmp_path / "out"
    first = run_eval("--config", str(config), "--out", str(out), cwd=tmp_path)
    assert first.code == 0, first.err
    head = first.headline
    assert head["answers"] == {"generated": 12, "reused": 0, "failed": 0}
    rows = {r["arm"]: r for r in head["results"]}
    assert set(rows) == {"rewrite", "align", "rewrite+align"}
    for arm in ("align", "rewrite+align"):  # the aligner's answer wins in both orders
        assert (rows[arm]["n"], rows[arm]["wins"], rows[arm]["delta_wr"]) == (3, 3, 1.0)
        assert rows[arm]["low"] == rows[arm]["high"] == 1.0
    assert (rows["rewrite"]["ties"], rows["rewrite"]["delta_wr"]) == (3, 0.0)
    measures = {m["arm"]: m for m in head["measures"]}
    assert measures["align"]["unchanged_share"] == 0.0 and measures["rewrite"]["rewritten_share"] == 1.0
    answers = {(a["prompt_id"], a["arm"]): a for a in read_jsonl(out / "answers.jsonl")}
    assert len(answers) == 12
    aligned = answers[("p0", "align")]
    assert aligned["text"] == HELPER_REPLY and aligned["raw"] == f"Hello from backend! You said: {PROMPTS[0]}"
    assert aligned["aligner_ms"] is not None
    assert answers[("p0", "rewrite")]["rewritten_prompt"] == HELPER_REPLY
    assert "ΔWR points (95% CI)" in (out / "report.md").read_text()
    assert (out / "report.png").read_bytes().startswith(b"\x89PNG")
    backend_calls, helper_calls, judge_calls = len(be.posts()), len(helper.posts()), judge.calls()
    assert backend_calls == 12 and judge_calls == 2 * 9

    again = run_eval("--config", str(config), "--out", str(out), cwd=tmp_path)
    assert again.code == 0, again.err
    assert again.headline["answers"] == {"generated": 0, "reused": 12, "failed": 0}
    assert again.headline["results"] == head["results"]
    assert (len(be.posts()), len(helper.posts()), judge.calls()) == (backend_calls, helper_calls, judge_calls)

    # A generation setting is part of every answer's key: all of them are made again, nothing is lost.
    changed = run_eval("--config", str(config), "--out", str(out), "generation.max_tokens=32", cwd=tmp_path)
    assert changed.code == 0, changed.err
    assert changed.headline["answers"]["generated"] == 12 and len(be.posts()) == backend_calls + 12
    assert len(read_jsonl(out / "answers.jsonl")) == 24


def test_blind_readers_verdicts_are_unblinded_and_reported(procs: Procs, tmp_path: Path) -> None:
    _be, _helper, gw, prompts = _stack(procs, tmp_path)
    pairs, verdicts = tmp_path / "blind" / "pairs.jsonl", tmp_path / "blind" / "verdicts.jsonl"
    config = write_yaml(
        tmp_path / "eval.yaml",
        {
            "prompts": [{"path": str(prompts), "name": "mine"}],
            "target": {"gateway_config": str(gw)},
            "arms": ["control", "align"],
            "judges": [{"blind": {"pairs": str(pairs), "verdicts": str(verdicts)}}],
            "generation": {"max_tokens": 64},
        },
    )
    out = tmp_path / "out"
    first = run_eval("--config", str(config), "--out", str(out), cwd=tmp_path)
    assert first.code == 0, first.err
    assert first.headline["judgements"]["unjudged"] == 3
    (row,) = first.headline["results"]
    assert (row["judge"], row["n"], row["delta_wr"]) == ("blind:verdicts", 0, None)
    waiting = read_jsonl(pairs)
    assert len(waiting) == 3 and {w["criterion"] for w in waiting} == {"helpful"}
    # The arms are hidden and the sides shuffled: the aligner's answer (the helper's reply) is A in some pairs only
    assert all("align" not in json.dumps(w).replace(HELPER_REPLY, "") for w in waiting)
    sides = ["A" if w["A"] == HELPER_REPLY else "B" for w in waiting]
    assert all(
        w[side] == HELPER_REPLY and w["prompt"][-1]["role"] == "user" for w, side in zip(waiting, sides, strict=True)
    )

    # The reader prefers the aligner's answer on two pairs (whichever side it is on) and calls the third a tie
    verdicts.write_text(
        "".join(
            json.dumps({"pair": w["pair"], "verdict": verdict, "why": "reason"}) + "\n"
            for w, verdict in zip(waiting, [sides[0], sides[1], "tie"], strict=True)
        )
    )
    second = run_eval("--config", str(config), "--out", str(out), cwd=tmp_path)
    assert second.code == 0, second.err
    (row,) = second.headline["results"]
    assert (row["n"], row["wins"], row["ties"], row["losses"]) == (3, 2, 1, 0)
    assert second.headline["judgements"]["unjudged"] == 0 and read_jsonl(pairs) == []
    # every verdict cached: the pairs file is still rewritten (a stale one from another run does not linger)
    pairs.write_text(json.dumps(waiting[0]) + "\n")
    cached = run_eval("--config", str(config), "--out", str(out), cwd=tmp_path)
    assert cached.code == 0 and cached.headline["judgements"]["made"] == 0 and read_jsonl(pairs) == []

    # A verdict that is not A, B or tie stops the run with its line; nothing cached is lost
    with verdicts.open("a") as f:
        f.write(json.dumps({"pair": waiting[2]["pair"], "verdict": "the first one"}) + "\n")
    bad = run_eval("--config", str(config), "--out", str(out), cwd=tmp_path)
    assert bad.code == 2 and "verdicts.jsonl:4: verdict must be A, B or tie" in bad.err
    assert "Traceback" not in bad.err
    assert len(read_jsonl(out / "answers.jsonl")) == 6


def test_two_gateway_arms_compared_reusing_a_plain_runs_answers(procs: Procs, tmp_path: Path) -> None:
    """``candidate``/``baseline`` as arms of two gateway configs (two aligners): the candidate side's answers
    made by a plain run of its config are reused (same key), only the other side is asked."""
    be, helper, gw, prompts = _stack(procs, tmp_path)
    other = procs.fake("other-helper", 0, "--reply", "A different correction that the judge does not prefer.")
    gw_other = gateway_yaml(tmp_path / "other.yaml", be.v1, other.v1)
    judge = _judge(procs, tmp_path)
    out = tmp_path / "out"
    plain = write_yaml(
        tmp_path / "plain.yaml",
        {"prompts": [{"path": str(prompts)}], "target": {"gateway_config": str(gw)}, "arms": ["control", "align"]},
    )
    first = run_eval("--config", str(plain), "--out", str(out), cwd=tmp_path)
    assert first.code == 0, first.err
    helper_calls = len(helper.posts())
    pair = write_yaml(
        tmp_path / "pair.yaml",
        {
            "prompts": [{"path": str(prompts)}],
            "target": {
                "candidate": {"gateway_config": str(gw), "arm": "align"},
                "baseline": {"gateway_config": str(gw_other), "arm": "align"},
            },
            "judges": [{"llm": {"url": judge.v1, "model": "fake-judge"}}],
        },
    )
    result = run_eval("--config", str(pair), "--out", str(out), cwd=tmp_path)
    assert result.code == 0, result.err
    assert result.headline["answers"] == {"generated": 3, "reused": 3, "failed": 0}
    assert len(helper.posts()) == helper_calls  # the candidate side was not even started
    corrections = [p for p in other.posts() if "Hello from backend" in str(p["body"])]  # not the start-up probe
    assert len(corrections) == 3
    (row,) = result.headline["results"]
    assert (row["arm"], row["baseline"], row["n"], row["wins"]) == ("candidate", "baseline", 3, 3)
    made = [a for a in read_jsonl(out / "answers.jsonl") if a["arm"] == "baseline"]
    assert [a["text"] for a in made] == ["A different correction that the judge does not prefer."] * 3

    bad = write_yaml(
        tmp_path / "bad.yaml",
        {
            "prompts": [{"path": str(prompts)}],
            "target": {
                "candidate": {"gateway_config": str(gw), "arm": "sideways"},
                "baseline": {"gateway_config": str(gw_other)},
            },
        },
    )
    refused = run_eval("--config", str(bad), "--out", str(out), cwd=tmp_path)
    assert refused.code == 2 and "target.candidate.arm: unknown arm 'sideways'" in refused.err


def test_interrupted_run_resumes_without_regenerating(procs: Procs, tmp_path: Path) -> None:
    be, _helper, gw, _ = _stack(procs, tmp_path, "--delay-s", "0.25")
    prompts = prompts_jsonl(tmp_path / "many.jsonl", [f"Question number {i}?" for i in range(12)])
    config = write_yaml(
        tmp_path / "eval.yaml",
        {
            "prompts": [{"path": str(prompts)}],
            "target": {"gateway_config": str(gw)},
            "arms": ["control", "align"],
            "concurrency": 1,
        },
    )
    out = tmp_path / "out"
    proc = start_eval("--config", str(config), "--out", str(out), cwd=tmp_path)
    answers = out / "answers.jsonl"
    deadline = time.monotonic() + 60
    while not (answers.exists() and len(answers.read_text().splitlines()) >= 4):
        assert proc.poll() is None and time.monotonic() < deadline, "no answers appeared"
        time.sleep(0.05)
    stopped = interrupt(proc)
    assert stopped.code == 130, stopped.err
    assert "Traceback" not in stopped.err and "run the same command again to resume" in stopped.err
    saved = read_jsonl(answers)
    assert 4 <= len(saved) < 24
    be.reset()

    resumed = run_eval("--config", str(config), "--out", str(out), cwd=tmp_path)
    assert resumed.code == 0, resumed.err
    assert resumed.headline["answers"] == {"generated": 24 - len(saved), "reused": len(saved), "failed": 0}
    assert len(be.posts()) == 24 - len(saved)  # every saved answer reused, none asked again
    keys = [a["key"] for a in read_jsonl(answers)]
    assert len(keys) == len(set(keys)) == 24


def test_running_gateway_target_over_a_socket(procs: Procs, tmp_path: Path) -> None:
    be = procs.fake("backend")
    helper = procs.fake("helper", 0, "--reply", HELPER_REPLY)
    cfg = gateway_config(backend("m", be.v1))
    cfg["helpers"] = {"aligner": {"url": helper.v1, "model": "aligner"}}
    cfg["server"]["api_keys"] = ["sk-eval"]
    gw = procs.gateway(cfg)
    prompts = prompts_jsonl(tmp_path / "p.jsonl", PROMPTS[:2])
    config = write_yaml(
        tmp_path / "eval.yaml",
        {
            "prompts": [{"path": str(prompts)}],
            "arms": ["align"],
            "target": {"url": gw.url, "api_key_env": "EVAL_KEY"},
        },
    )
    result = run_eval(
        "--config", str(config), "--out", str(tmp_path / "out"), cwd=tmp_path, env={"EVAL_KEY": "sk-eval"}
    )
    assert result.code == 0, result.err
    assert result.headline["results"] == []  # no judge: the measures alone
    measures = {m["arm"]: m for m in result.headline["measures"]}
    assert measures["align"]["answers"] == 2 and measures["align"]["unchanged_share"] == 0.0
    # the gateway served both on the forced arm, behind its API key
    assert len([line for line in gw.log_lines("aligngate.access") if "arm=align" in line]) == 2
    assert len(be.posts()) == 4 and len(helper.posts()) == 2  # align and the baseline (control), 2 prompts each
    refused = run_eval(
        "--config", str(config), "--out", str(tmp_path / "out2"), cwd=tmp_path, env={"EVAL_KEY": "wrong"}
    )
    assert refused.code == 2 and "401" in refused.err, refused.err


def test_from_store_judges_shadow_corrections(procs: Procs, tmp_path: Path) -> None:
    url = create_store(tmp_path / "store.db")
    requests = [
        req("s1", T0 + 1, messages=user("Is it safe to eat raw eggs?"), raw_answer="Sure.", final_answer="Sure."),
        req("s2", T0 + 2, messages=user("Say hi."), raw_answer="hi", final_answer="hi"),
        req("s3", T0 + 3, messages=user("Fail."), status=502),
        req("s4", T0 + 4, messages=user("Skipped."), raw_answer="x", final_answer="x"),
        req("s5", T0 + 5, messages=user("Rewrite only."), raw_answer="y", final_answer="y"),
        req("s6", T0 + 6, messages=user("No shadow."), raw_answer="z", final_answer="z"),
    ]
    shadows = [
        shadow_run("s1", T0 + 10, corrected=HELPER_REPLY, aligner_ms=12.0),
        shadow_run("s2", T0 + 11, corrected="Hello there!", aligner_ms=8.0),
        shadow_run("s3", T0 + 12, corrected="never"),
        shadow_run("s4", T0 + 13, skipped="saturated"),
        shadow_run("s5", T0 + 14, arm="rewrite", rewritten_prompt="Please rewrite only."),
    ]
    insert(url, requests, shadow_runs=shadows)
    judge = _judge(procs, tmp_path)
    config = write_yaml(tmp_path / "eval.yaml", {"judges": [{"llm": {"url": judge.v1, "model": "fake-judge"}}]})
    result = run_eval("--config", str(config), "--from-store", url, "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert result.code == 0, result.err
    (row,) = result.headline["results"]
    assert (row["set"], row["arm"], row["baseline"]) == ("store", "shadow", "served")
    assert (row["n"], row["wins"], row["ties"]) == (2, 1, 1)  # s1: the judge prefers the correction; s2: a tie
    assert result.headline["prompts"] == {"store": 2}
    assert judge.calls() == 4
    before = (tmp_path / "store.db").read_bytes()
    assert (
        run_eval("--config", str(config), "--from-store", url, "--out", str(tmp_path / "out"), cwd=tmp_path).code == 0
    )
    assert judge.calls() == 4 and (tmp_path / "store.db").read_bytes() == before  # cached verdicts; read only


def test_failures_exit_2_with_one_line_and_keep_cached_answers(procs: Procs, tmp_path: Path) -> None:
    _be, _helper, gw, prompts = _stack(procs, tmp_path)
    out = tmp_path / "out"
    base = {"prompts": [{"path": str(prompts)}], "target": {"gateway_config": str(gw)}, "arms": ["control", "align"]}
    ok = run_eval("--config", str(write_yaml(tmp_path / "ok.yaml", base)), "--out", str(out), cwd=tmp_path)
    assert ok.code == 0, ok.err
    cached = (out / "answers.jsonl").read_bytes()
    assert len(cached.splitlines()) == 6

    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    cases = {
        "unknown key": (write_yaml(tmp_path / "bad.yaml", {**base, "judge": []}), "unknown config key(s) judge"),
        "unreachable judge": (
            write_yaml(
                tmp_path / "gone.yaml",
                {
                    **base,
                    "judges": [{"llm": {"url": f"http://127.0.0.1:{free_port()}/v1", "model": "m"}}],
                },
            ),
            "cannot reach",
        ),
        "empty prompt set": (
            write_yaml(tmp_path / "empty.yaml", {**base, "prompts": [{"path": str(empty)}]}),
            "has no prompts",
        ),
        "unreachable target": (
            write_yaml(
                tmp_path / "target.yaml",
                {
                    **base,
                    "target": {"url": f"http://127.0.0.1:{free_port()}"},
                },
            ),
            "cannot reach the gateway",
        ),
    }
    for name, (config, message) in cases.items():
        result = run_eval("--config", str(config), "--out", str(out), cwd=tmp_path)
        assert result.code == 2, (name, result.code, result.err)
        lines = result.err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("aligngate: eval: ") and message in lines[0], (name, lines)
        assert (out / "answers.jsonl").read_bytes() == cached, name
