"""What may import what (the README's "Architecture"): imports point down.

* ``core/`` imports none of the project's packages; ``models/`` imports neither ``gateway/`` nor ``train/``;
  ``train/`` does not import ``gateway/``; ``gateway/`` imports ``train/`` only inside the ``aligngate train``
  command (``gateway/cli.py``, at call time).
* Inside ``gateway/`` each module has a layer, and imports only from its own layer or those below
  (:data:`GATEWAY_LAYERS`); a new module must be given one here.
* Importing the gateway loads no torch (a gateway in front of vLLM stays small).

Every ``import`` counts, at module level or inside a function, except where a rule says otherwise.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("core", "models", "train", "gateway")

#: The layers of gateway/, bottom first; a module (dotted, without ``gateway.``) or a sub-package (``name.*``).
GATEWAY_LAYERS: tuple[tuple[str, ...], ...] = (
    # the base: settings, errors, the per-request context, metrics
    ("", "config", "auth", "errors", "context", "metrics", "runtime", "deadlines"),
    # what the request path stands on: backends, the trace store, helper engines, answering, routing
    ("upstream.*", "store.*", "engines", "respond", "routing", "middleware", "ratelimit.*"),
    # the alignment pipeline
    ("pipeline.*",),
    # the services behind the routes, and the reports over the store
    ("inference.*", "feedback.*", "ops.*", "report.*", "ui.*"),
    # the application, the server and the command line
    ("app", "server", "cli", "__main__", "eval.*", "connections"),
)


@dataclass(frozen=True)
class Import:
    source: str  # the importing module, dotted
    target: str  # the imported module, dotted
    line: int
    top_level: bool  # at module level (not inside a function)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_module(dotted: str) -> bool:
    base = ROOT.joinpath(*dotted.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def imports_of(path: Path) -> list[Import]:
    source = module_name(path)
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top = {id(node) for node in tree.body}
    found: list[Import] = []
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from gateway import metrics` imports the module gateway.metrics
            targets = [f"{node.module}.{a.name}" if _is_module(f"{node.module}.{a.name}") else node.module
                       for a in node.names]
        for target in targets:
            if target.split(".")[0] in PACKAGES:
                found.append(Import(source, target, node.lineno, id(node) in top))
    return found


def all_imports() -> list[Import]:
    return [imp for pkg in PACKAGES for path in sorted((ROOT / pkg).rglob("*.py")) for imp in imports_of(path)]


def gateway_layer(module: str) -> int:
    """The layer of a gateway module (``gateway.pipeline.shadow`` → 2)."""
    name = module.removeprefix("gateway").removeprefix(".")
    for rank, members in enumerate(GATEWAY_LAYERS):
        for member in members:
            if member.endswith(".*"):
                if name == member[:-2] or name.startswith(member[:-1]):
                    return rank
            elif name == member:
                return rank
    raise AssertionError(f"{module} has no layer in tests/test_architecture.py GATEWAY_LAYERS: give it one")


def violations(imports: list[Import]) -> list[str]:
    out: list[str] = []
    for imp in imports:
        src, dst = imp.source.split(".")[0], imp.target.split(".")[0]
        where = f"{imp.source}:{imp.line} imports {imp.target}"
        if src == "core" and dst != "core":
            out.append(f"{where} (core/ imports none of the project's packages)")
        elif src == "models" and dst in ("gateway", "train"):
            out.append(f"{where} (models/ imports neither gateway/ nor train/)")
        elif src == "train" and dst == "gateway":
            out.append(f"{where} (train/ does not import gateway/)")
        elif src == "gateway" and dst == "train" and (imp.source != "gateway.cli" or imp.top_level):
            out.append(f"{where} (gateway/ imports train/ only inside the `aligngate train` command)")
        elif src == "gateway" and dst == "gateway" and gateway_layer(imp.target) > gateway_layer(imp.source):
            out.append(f"{where} (an upward import: layer {gateway_layer(imp.source)} imports layer "
                       f"{gateway_layer(imp.target)})")
    return out


def test_imports_point_down() -> None:
    found = all_imports()
    assert len(found) > 100  # the walk found the project
    assert violations(found) == []


@pytest.mark.parametrize(
    ("source", "target", "top_level"),
    [
        # the upward imports the project had before its renovation, each caught
        ("gateway.pipeline.pipeline", "gateway.inference.relay", True),
        ("gateway.upstream.local", "gateway.inference.schemas", True),
        ("train.evaluate", "gateway.report.ab", True),
        ("models.remote", "gateway.errors", True),
        ("core.stats", "models.engine", True),
        ("gateway.app", "train.run", False),
        ("gateway.cli", "train.run", True),
    ],
)
def test_each_rule_catches_an_upward_import(source: str, target: str, top_level: bool) -> None:
    assert violations([Import(source, target, 1, top_level)])


def test_allowed_imports_pass() -> None:
    allowed = [
        Import("gateway.cli", "train.run", 1, False),  # the `aligngate train` command, at call time
        Import("gateway.inference.service", "gateway.pipeline.pipeline", 1, True),
        Import("gateway.pipeline.shadow", "gateway.store.records", 1, True),
        Import("train.rm", "models.local.source", 1, True),
        Import("models.remote", "core.stats", 1, True),
    ]
    assert violations(allowed) == []


def test_every_gateway_module_has_a_layer() -> None:
    for path in (ROOT / "gateway").rglob("*.py"):
        gateway_layer(module_name(path))


def test_importing_the_gateway_loads_no_torch() -> None:
    modules = sorted(module_name(p) for p in (ROOT / "gateway").rglob("*.py") if p.name != "__main__.py")
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'trl', 'peft') if m in sys.modules)\n"
        "sys.exit(', '.join(heavy) or None)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"importing gateway/ loaded: {proc.stderr.strip()[-500:]}"
