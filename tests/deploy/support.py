"""Shared helpers of the deploy/ tests: paths, compose interpolation, Dockerfile and .dockerignore parsing,
PromQL metric extraction and the metric names the gateway exports. No Docker, no cluster, no network."""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
CHART = DEPLOY / "helm" / "aligngate"
SCHEMAS = Path(__file__).resolve().parent / "schemas"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "aligngate.json"

#: Gateway metrics a deploy/ file may already query although gateway/metrics.py does not export them yet.
#: aligngate_feedback_total{arm,rating} lands with the feedback issue; remove it from here once it is exported
#: (the test tolerates both states, so nothing breaks in between).
PENDING_METRICS: dict[str, tuple[str, ...]] = {"aligngate_feedback_total": ("arm", "rating")}

#: vLLM metrics the dashboard and alerts may use: the V1 engine's names (vLLM >= 0.10; `vllm:gpu_cache_usage_perc`
#: was renamed `vllm:kv_cache_usage_perc`), per vLLM's "Production Metrics" page. Label: model_name.
VLLM_METRICS = {
    "vllm:num_requests_running",
    "vllm:num_requests_waiting",
    "vllm:kv_cache_usage_perc",
    "vllm:time_to_first_token_seconds_bucket",
    "vllm:e2e_request_latency_seconds_bucket",
    "vllm:generation_tokens_total",
    "vllm:prompt_tokens_total",
    "vllm:spec_decode_num_drafts_total",
    "vllm:spec_decode_num_draft_tokens_total",
    "vllm:spec_decode_num_accepted_tokens_total",
}
#: Series Prometheus itself provides for every target.
PROMETHEUS_BUILTINS = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}
#: Labels every scraped series has, or that our scrape configs / the Prometheus Operator add.
TARGET_LABELS = {"job", "instance", "service", "namespace", "pod", "endpoint", "le"}


# --------------------------------------------------------------------------------------------------------------
# Metrics the gateway exports
# --------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Exported:
    """Exposition names (``aligngate_requests_total``, ``..._bucket``, ...) and each one's label names."""

    labels: dict[str, frozenset[str]]


@cache
def exported_metrics() -> Exported:
    """What ``GET /metrics`` can show, read from the collectors defined in gateway/metrics.py."""
    from prometheus_client import Counter, Gauge, Histogram, Summary

    from gateway import metrics

    suffixes = {Counter: ("_total", "_created"), Gauge: ("",), Histogram: ("_bucket", "_sum", "_count", "_created"),
                Summary: ("_sum", "_count", "_created")}
    labels: dict[str, frozenset[str]] = {}
    for value in vars(metrics).values():
        for kind, ends in suffixes.items():
            if isinstance(value, kind):
                base = value._name  # prometheus_client keeps the name without the type suffix
                names = frozenset(value._labelnames)
                for end in ends:
                    extra = {"le"} if end == "_bucket" else set()
                    labels[base + end] = names | extra
    return Exported(labels)


# --------------------------------------------------------------------------------------------------------------
# PromQL: which metrics (and labels) an expression uses
# --------------------------------------------------------------------------------------------------------------
_FUNCTIONS_AND_KEYWORDS = {
    "sum", "min", "max", "avg", "count", "stddev", "stdvar", "topk", "bottomk", "quantile", "count_values", "group",
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset",
    "rate", "irate", "increase", "delta", "idelta", "deriv", "histogram_quantile", "clamp_min", "clamp_max", "clamp",
    "abs", "ceil", "floor", "round", "sqrt", "exp", "ln", "log2", "log10", "label_replace", "label_join", "vector",
    "scalar", "time", "timestamp", "absent", "absent_over_time", "changes", "resets", "sort", "sort_desc",
    "avg_over_time", "min_over_time", "max_over_time", "sum_over_time", "count_over_time", "last_over_time",
    "quantile_over_time", "predict_linear", "label_values", "inf", "nan",
}
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_SELECTOR = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)?\s*\{([^}]*)\}")
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_RANGE = re.compile(r"\[[^\]]*\]")
_IDENT = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_GRAFANA_VARS = re.compile(r"\$__\w+|\$\{[^}]*\}|\$\w+")


@dataclass
class PromQLUse:
    metrics: set[str] = field(default_factory=set)
    #: metric -> label names used in its own selector braces
    selector_labels: dict[str, set[str]] = field(default_factory=dict)
    #: label names of by()/without()/on() clauses anywhere in the expression
    grouping_labels: set[str] = field(default_factory=set)


def promql_use(expr: str) -> PromQLUse:
    """The metric names and label names a PromQL expression uses (Grafana $variables allowed)."""
    use = PromQLUse()
    text = _GRAFANA_VARS.sub("1", _STRING.sub('""', expr))
    for match in _SELECTOR.finditer(text):
        name, inner = match.group(1), match.group(2)
        labels = {m.group(1) for m in re.finditer(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)", inner)}
        if name:
            use.metrics.add(name)
            use.selector_labels.setdefault(name, set()).update(labels)
    text = _SELECTOR.sub(lambda m: f" {m.group(1) or ''} ", text)
    for match in _GROUPING.finditer(text):
        use.grouping_labels.update(x.strip() for x in match.group(2).split(",") if x.strip())
    text = _RANGE.sub(" ", _GROUPING.sub(" ", text))
    for match in _IDENT.finditer(text):
        word = match.group(0)
        following = text[match.end():].lstrip()
        if word.lower() in _FUNCTIONS_AND_KEYWORDS or following.startswith("("):
            continue
        if re.fullmatch(r"\d+[smhdwy]", word) or word in {"e"}:
            continue
        use.metrics.add(word)
    return use


# --------------------------------------------------------------------------------------------------------------
# Compose
# --------------------------------------------------------------------------------------------------------------
class InterpolationError(ValueError):
    pass


_VAR = re.compile(r"\$\$|\$\{(?P<braced>[^}]*)\}|\$(?P<plain>[A-Za-z_][A-Za-z0-9_]*)")
_BRACED = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:-|-|:\?|\?|:\+|\+)(?P<arg>.*))?$", re.S)


def interpolate(value: str, env: dict[str, str], used: set[str] | None = None) -> str:
    """Compose-spec interpolation of one string: ``$$``, ``$VAR``, ``${VAR}``, ``${VAR:-d}``, ``${VAR-d}``,
    ``${VAR:?err}``, ``${VAR?err}``, ``${VAR:+r}``, ``${VAR+r}``. Nested expressions are refused."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        if m.group("plain"):
            name = m.group("plain")
            if used is not None:
                used.add(name)
            return env.get(name, "")
        expr = m.group("braced")
        if "$" in expr:
            raise InterpolationError(f"nested interpolation is not supported here: ${{{expr}}}")
        parsed = _BRACED.match(expr)
        if parsed is None:
            raise InterpolationError(f"invalid interpolation: ${{{expr}}}")
        name, op, arg = parsed.group("name"), parsed.group("op"), parsed.group("arg") or ""
        if used is not None:
            used.add(name)
        val = env.get(name)
        if op is None:
            return val or ""
        if op == ":-":
            return val if val else arg
        if op == "-":
            return val if val is not None else arg
        if op in (":?", "?"):
            if val is None or (op == ":?" and not val):
                raise InterpolationError(f"required variable {name} is missing: {arg}")
            return val
        if op == ":+":
            return arg if val else ""
        return arg if val is not None else ""  # "+"

    return _VAR.sub(sub, value)


def interpolate_tree(node: Any, env: dict[str, str], used: set[str] | None = None) -> Any:
    if isinstance(node, dict):
        return {k: interpolate_tree(v, env, used) for k, v in node.items()}
    if isinstance(node, list):
        return [interpolate_tree(v, env, used) for v in node]
    if isinstance(node, str):
        return interpolate(node, env, used)
    return node


def variables(node: Any) -> set[str]:
    """Every variable name a compose tree interpolates (whatever the environment)."""
    names: set[str] = set()
    if isinstance(node, dict):
        for v in node.values():
            names |= variables(v)
    elif isinstance(node, list):
        for v in node:
            names |= variables(v)
    elif isinstance(node, str):
        for m in _VAR.finditer(node):
            if m.group("plain"):
                names.add(m.group("plain"))
            elif m.group("braced") is not None:
                parsed = _BRACED.match(m.group("braced"))
                if parsed:
                    names.add(parsed.group("name"))
    return names


def read_env_file(path: Path) -> dict[str, str]:
    """A compose ``.env`` file: KEY=VALUE lines, # comments, single or double quotes around a value."""
    env: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: not KEY=VALUE: {raw!r}"
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        env[key.strip()] = value
    return env


def load_compose() -> dict[str, Any]:
    data = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    assert isinstance(data, dict)
    return data


def active_services(compose: dict[str, Any], profiles: set[str]) -> dict[str, Any]:
    return {name: svc for name, svc in compose["services"].items()
            if not svc.get("profiles") or set(svc["profiles"]) & profiles}


# --------------------------------------------------------------------------------------------------------------
# Dockerfiles and .dockerignore
# --------------------------------------------------------------------------------------------------------------
@dataclass
class Instruction:
    cmd: str
    args: str
    line: int


def dockerfile_instructions(path: Path) -> list[Instruction]:
    """Instructions with continuation lines joined and comment lines dropped (as BuildKit parses them)."""
    out: list[Instruction] = []
    buf: list[str] = []
    start = 0
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        stripped = raw.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if buf and stripped.startswith("#"):
            continue
        if not buf:
            start = number
        if stripped.endswith("\\"):
            buf.append(stripped[:-1].strip())
            continue
        buf.append(stripped)
        text = " ".join(x for x in buf if x)
        buf = []
        cmd, _, args = text.partition(" ")
        out.append(Instruction(cmd.upper(), args.strip(), start))
    assert not buf, f"{path}: dangling line continuation"
    return out


def stages(path: Path) -> list[list[Instruction]]:
    """Instructions grouped by build stage (the last group is the image that ships)."""
    groups: list[list[Instruction]] = []
    for ins in dockerfile_instructions(path):
        if ins.cmd == "FROM":
            groups.append([])
        if groups:
            groups[-1].append(ins)
    return groups


def exec_form(args: str) -> list[str] | None:
    """The JSON array of an exec-form instruction, else None."""
    text = args.strip()
    if text.startswith("CMD "):
        text = text[4:].strip()
    if text.startswith("["):
        parsed = json.loads(text)
        assert isinstance(parsed, list)
        return [str(x) for x in parsed]
    return None


def shell_words(args: str) -> list[str]:
    return shlex.split(args, posix=True)


def shell_commands(args: str) -> list[list[str]]:
    """The simple commands of a shell line, split at ``&&``, ``||``, ``;`` and ``|`` outside quotes."""
    lexer = shlex.shlex(args, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands: list[list[str]] = [[]]
    for token in lexer:
        if token in ("&&", "||", ";", "|"):
            commands.append([])
        else:
            commands[-1].append(token)
    return [c for c in commands if c]


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out = ""
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**", i):
            out += ".*"
            i += 2
            if i < len(pattern) and pattern[i] == "/":
                i += 1
                out = out[:-2] + "(?:.*/)?"
            continue
        if c == "*":
            out += "[^/]*"
        elif c == "?":
            out += "[^/]"
        else:
            out += re.escape(c)
        i += 1
    return re.compile(out + r"\Z")


def dockerignore_excludes(patterns: list[str], path: str) -> bool:
    """Whether a context-relative ``path`` is left out of the build context (moby/patternmatcher semantics:
    the last matching pattern wins; a pattern matches a path or any of its parent directories)."""
    parts = path.strip("/").split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for raw in patterns:
        negate = raw.startswith("!")
        pattern = (raw[1:] if negate else raw).strip().strip("/")
        regex = _pattern_regex(pattern)
        if any(regex.match(c) for c in candidates):
            excluded = not negate
    return excluded


def dockerignore_patterns(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


# --------------------------------------------------------------------------------------------------------------
# Helm
# --------------------------------------------------------------------------------------------------------------
def manifests(rendered: dict[str, str]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(template path, object) for every YAML document the chart rendered."""
    for template, text in sorted(rendered.items()):
        if template.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                yield template, doc


def resolve_env(env: list[dict[str, Any]], secrets: dict[tuple[str, str], str]) -> dict[str, str]:
    """A container's environment as the kubelet builds it: secretKeyRef values looked up in ``secrets``
    ((secret name, key) -> value) and ``$(VAR)`` references to earlier variables expanded."""
    out: dict[str, str] = {}
    for item in env:
        if "value" in item:
            out[item["name"]] = re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: out.get(m.group(1), m.group(0)),
                                       str(item["value"]))
        else:
            ref = item["valueFrom"]["secretKeyRef"]
            key = (ref["name"], ref["key"])
            if key in secrets:
                out[item["name"]] = secrets[key]
            else:
                assert ref.get("optional"), f"env {item['name']} reads a secret the release does not hold: {key}"
    return out
