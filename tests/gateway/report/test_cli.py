"""``python -m gateway ab report`` and ``python -m gateway data export`` as real subprocesses on a seeded store:
exit statuses, what they print and write, clear errors without tracebacks. The processes run side by side to
keep the suite fast."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from gateway.cli import main
from tests.gateway.report.seed import ab_rows, create_store, export_rows, insert
from train.data.loaders import load_gateway_export

ROOT = Path(__file__).resolve().parents[3]


def start(*args: str, cwd: Path) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALIGNGATE_")}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.Popen([sys.executable, "-m", "gateway", *args], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finish(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=60)
    return proc.returncode, out, err


def test_cli_end_to_end(tmp_path: Path) -> None:
    ab_url = create_store(tmp_path / "ab.db")
    insert(ab_url, *ab_rows())
    ex_url = create_store(tmp_path / "ex.db")
    insert(ex_url, *export_rows())
    config = tmp_path / "aligngate.yaml"
    config.write_text(f"store: {{url: '{ex_url}'}}\n")
    procs = {
        "report": start("ab", "report", "--store", ab_url, "--out", str(tmp_path / "rep"), cwd=tmp_path),
        "prefs": start("data", "export", "--kind", "preferences", "--config", str(config), "--out",
                       str(tmp_path / "prefs.jsonl"), cwd=tmp_path),
        "missing": start("ab", "report", "--store", "sqlite:///nowhere/missing.db", cwd=tmp_path),
        "bad-pg": start("data", "export", "--kind", "aligner", "--store", "postgresql://u:secret@127.0.0.1:1/db",
                        "--out", str(tmp_path / "x.jsonl"), cwd=tmp_path),
    }
    results = {name: finish(proc) for name, proc in procs.items()}

    code, out, err = results["report"]
    assert code == 0, err
    assert "| control " in out and "550 / 955" in out and "0.025 *" in out
    assert (tmp_path / "rep" / "report.md").read_text().startswith("# A/B report: experiment `exp`")
    assert (tmp_path / "rep" / "report.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")

    code, out, err = results["prefs"]
    assert code == 0, err
    assert out.splitlines()[0] == f"exported 6 preferences rows to {tmp_path / 'prefs.jsonl'}"
    assert "  correction: 3 written; skipped 4 (failed 1, identical 1, no_text 1, non_text_prompt 1)" in out
    assert "  not used: 1 down-rated answers without a correction" in out
    assert len(load_gateway_export(tmp_path / "prefs.jsonl", "preferences")) == 6

    for name, needle in [
        ("missing", "no database file at"),
        ("bad-pg", "cannot read the store 'postgresql://u:***@127.0.0.1:1/db'"),
    ]:
        code, out, err = results[name]
        assert code == 2, (name, out, err)
        assert needle in err, (name, err)
        assert err.startswith("aligngate: ") and "Traceback" not in err, (name, err)
        assert "secret" not in err
    assert not (tmp_path / "nowhere").exists()
    assert not (tmp_path / "x.jsonl").exists()


def test_cli_flags_in_process(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    ab_url = create_store(tmp_path / "ab.db")
    insert(ab_url, *ab_rows())
    ex_url = create_store(tmp_path / "ex.db")
    insert(ex_url, *export_rows())
    # a relative URL, forced arms included, the default --out
    assert main(["ab", "report", "--store", "sqlite:///ab.db", "--include-forced", "--experiment", "exp",
                 "--since", "2026-05-01"]) == 0
    out = capsys.readouterr().out
    assert "| align   |       16 |" in out and "8/15" in out
    assert (tmp_path / "ab-report" / "report.md").exists() and (tmp_path / "ab-report" / "report.png").exists()
    assert main(["data", "export", "--kind", "rewriter", "--store", ex_url, "--experiment", "exp",
                 "--out", "rw.jsonl"]) == 0
    rows = [orjson.loads(line) for line in (tmp_path / "rw.jsonl").read_bytes().splitlines()]
    assert [r["request_id"] for r in rows] == ["e5", "e14"]
    for argv, needle in [
        (["data", "export", "--kind", "aligner", "--store", "http://example.com/db", "--out", "x.jsonl"],
         "--store must be a sqlite:///FILE or postgresql://... URL"),
        (["ab", "report", "--store", ab_url, "--since", "last tuesday"], "--since must be an ISO 8601 date or time"),
        (["ab", "report", "--store", ab_url, "--experiment", "nope"], "experiment 'nope' has no requests"),
    ]:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("aligngate: ") and needle in err, err


def test_srm_check_uses_the_config_weights(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ab_url = create_store(tmp_path / "ab.db")
    insert(ab_url, *ab_rows())
    out_dir = str(tmp_path / "rep")

    def report(config: str | None, *extra: str) -> str:
        argv = ["ab", "report", "--store", ab_url, "--out", out_dir, *extra]
        if config is not None:
            (tmp_path / "gw.yaml").write_text(config)
            argv += ["--config", str(tmp_path / "gw.yaml")]
        assert main(argv) == 0
        return capsys.readouterr().out

    # no config: the weights are unknown, nothing is guessed
    assert "SRM check not run: the configured arm weights are unknown" in report(None)
    # exp's non-forced requests: control 11, align 11, rewrite 4 (26); configured 1:1:1 → E = 26/3 each,
    # χ² = (2.3333² + 2.3333² + 4.6667²) / 8.6667 = 3.7692, 2 df → p = e^(-3.7692/2) = 0.152: no mismatch
    out = report("experiment: {name: exp, arms: {control: 1, align: 1, rewrite: 1}}\n")
    assert "SRM check passed: observed shares match the configured ones (p = 0.152)" in out
    assert "rewrite 4 (15.4% vs 33.3% configured)" in out
    # rewrite has requests but weight 0: impossible under the plan
    out = report("experiment: {name: exp, arms: {control: 1, align: 1}}\n")
    assert "SRM: observed shares differ from configured (p < 0.001) — results untrustworthy" in out
    assert "Untrustworthy: the SRM check failed." in (tmp_path / "rep" / "report.md").read_text()
    # the config's experiment is another one: its weights may not apply
    out = report("experiment: {name: other, arms: {control: 1}}\n")
    assert "SRM check not run: the config's experiment is 'other', not 'exp'" in out
    assert main(["ab", "report", "--store", ab_url, "--out", out_dir, "--planned-ratings", "0"]) == 2
    assert "--planned-ratings must be at least 1" in capsys.readouterr().err


def test_nothing_to_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = create_store(tmp_path / "empty.db")
    assert main(["ab", "report", "--store", url, "--out", str(tmp_path / "r")]) == 1
    assert "has no requests yet" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
    requests, _ = ab_rows()
    insert(url, [r for r in requests if r["arm_forced"]])
    assert main(["ab", "report", "--store", url, "--out", str(tmp_path / "r")]) == 1
    assert "only forced-arm requests (5); --include-forced includes them" in capsys.readouterr().err
    assert main(["ab", "report", "--store", url, "--out", str(tmp_path / "r"), "--include-forced"]) == 0


def test_bad_config_and_unwritable_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("store: {url: 'mysql://x'}\n")
    assert main(["data", "export", "--kind", "aligner", "--config", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "store.url must start with sqlite:/// or postgresql://" in capsys.readouterr().err
    url = create_store(tmp_path / "s.db")
    insert(url, *export_rows())
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["data", "export", "--kind", "aligner", "--store", url, "--out", str(blocker / "o.jsonl")]) == 1
    assert f"cannot write {blocker / 'o.jsonl'}" in capsys.readouterr().err


def test_importing_the_cli_leaves_prometheus_alone() -> None:
    # `serve` sets PROMETHEUS_MULTIPROC_DIR before prometheus_client is imported: the report commands must not
    # import the store (and with it the metrics) when the CLI module loads.
    code = "import sys, gateway.cli; sys.exit('prometheus_client' in sys.modules or 'sqlalchemy' in sys.modules)"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)
