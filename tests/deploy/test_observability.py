"""Grafana dashboard, Prometheus scrape config and alert rules: every metric they query is one the gateway
exports (read from gateway/metrics.py at test time) or a known vLLM metric, with labels that metric has."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from tests.deploy.support import (
    CHART,
    DASHBOARD,
    DEPLOY,
    PENDING_METRICS,
    PROMETHEUS_BUILTINS,
    TARGET_LABELS,
    VLLM_METRICS,
    exported_metrics,
    load_compose,
    promql_use,
)


def _dashboard() -> dict[str, Any]:
    data = json.loads(DASHBOARD.read_text())
    assert isinstance(data, dict)
    return data


def _panels(dash: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for panel in dash["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))  # collapsed rows keep their panels inside
    return out


def _dashboard_exprs() -> list[tuple[str, str]]:
    exprs = [(p["title"], t["expr"]) for p in _panels(_dashboard()) for t in p.get("targets", [])]
    for var in _dashboard()["templating"]["list"]:
        if var.get("type") == "query":
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            exprs.append((f"variable {var['name']}", query.replace("label_values(", "").rsplit(",", 1)[0]))
    return exprs


def _alert_rules() -> list[dict[str, Any]]:
    data = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    return [rule for group in data["groups"] for rule in group["rules"]]


def _known_labels() -> dict[str, frozenset[str]]:
    labels = dict(exported_metrics().labels)
    for name, names in PENDING_METRICS.items():
        labels.setdefault(name, frozenset(names))
    return labels


def _check_expr(where: str, expr: str) -> list[str]:
    """Problems of one PromQL expression: unknown metrics, and labels a metric does not carry."""
    known = _known_labels()
    use = promql_use(expr)
    problems = []
    assert use.metrics, f"{where}: no metric found in {expr!r}"
    for metric in sorted(use.metrics):
        if metric.startswith("aligngate_"):
            if metric not in known:
                problems.append(f"{where}: {metric} is not exported by gateway/metrics.py")
                continue
            bad = use.selector_labels.get(metric, set()) - known[metric] - TARGET_LABELS
            if bad:
                problems.append(f"{where}: {metric} has no label(s) {sorted(bad)} (it has {sorted(known[metric])})")
        elif metric.startswith("vllm:"):
            if metric not in VLLM_METRICS:
                problems.append(f"{where}: {metric} is not a vLLM metric this repo knows (VLLM_METRICS)")
            bad = use.selector_labels.get(metric, set()) - {"model_name"} - TARGET_LABELS
            if bad:
                problems.append(f"{where}: {metric} has no label(s) {sorted(bad)}")
        elif metric not in PROMETHEUS_BUILTINS:
            problems.append(f"{where}: {metric} is neither an aligngate_, a vllm: nor a Prometheus metric")
    # Grouping labels must exist on at least one metric of the expression (or be target labels).
    available = set(TARGET_LABELS) | {"model_name"}
    for metric in use.metrics:
        available |= known.get(metric, frozenset())
    missing = use.grouping_labels - available
    if missing:
        problems.append(f"{where}: grouping by {sorted(missing)}, which no metric of {expr!r} carries")
    return problems


# ---------------------------------------------------------------------------------------------------------------
def test_exported_metrics_are_read_from_the_gateway() -> None:
    names = exported_metrics().labels
    # The contract's names (README "Metrics"), as exposed.
    contract = (
        "aligngate_requests_total", "aligngate_request_duration_seconds_bucket", "aligngate_ttft_seconds_bucket",
        "aligngate_overhead_seconds_bucket", "aligngate_in_flight", "aligngate_upstream_errors_total",
        "aligngate_helper_duration_seconds_bucket", "aligngate_helper_failures_total", "aligngate_helper_skips_total",
    )
    for name in contract:
        assert name in names, name
    assert names["aligngate_requests_total"] == {"model", "arm", "status"}
    assert "le" in names["aligngate_ttft_seconds_bucket"]


def test_pending_metrics_are_still_pending_or_match_what_landed() -> None:
    names = exported_metrics().labels
    for name, labels in PENDING_METRICS.items():
        if name in names:  # it landed: the labels the dashboard assumes must be the real ones
            assert set(labels) <= names[name], f"{name} landed with labels {sorted(names[name])}"


def test_promql_extraction_catches_unknown_metrics_and_labels() -> None:
    # The checker itself must fail on what it is meant to catch.
    assert _check_expr("t", 'sum by (arm) (rate(aligngate_requests_total{model=~"$model"}[$__rate_interval]))') == []
    assert _check_expr("t", "rate(aligngate_request_total[5m])")  # typo: no such metric
    assert _check_expr("t", 'rate(aligngate_helper_failures_total{arm="x"}[5m])')  # no arm label
    assert _check_expr("t", "sum by (arm) (rate(aligngate_helper_duration_seconds_count[5m]))")  # no arm label
    assert _check_expr("t", "vllm:gpu_cache_usage_perc")  # renamed in vLLM V1
    expr = 'histogram_quantile(0.9, sum by (le, arm) (rate(aligngate_ttft_seconds_bucket{model=~"a|b"}[1m])))'
    use = promql_use(expr)
    assert use.metrics == {"aligngate_ttft_seconds_bucket"}
    assert use.grouping_labels == {"le", "arm"}


def test_every_dashboard_query_uses_exported_metrics_and_labels() -> None:
    problems = [p for where, expr in _dashboard_exprs() for p in _check_expr(f"dashboard panel {where!r}", expr)]
    assert not problems, "\n".join(problems)


def test_every_alert_uses_exported_metrics_and_labels() -> None:
    rules = _alert_rules()
    assert rules
    problems = [p for rule in rules for p in _check_expr(f"alert {rule['alert']}", rule["expr"])]
    assert not problems, "\n".join(problems)
    for rule in rules:
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert rule["annotations"]["summary"]


def test_dashboard_covers_what_operators_need() -> None:
    queried = set().union(*(promql_use(expr).metrics for _, expr in _dashboard_exprs()))
    needed = {
        "aligngate_requests_total",                   # per-arm request rate
        "aligngate_request_duration_seconds_bucket",  # latency
        "aligngate_ttft_seconds_bucket",              # time to first token
        "aligngate_helper_duration_seconds_bucket",   # helper latency
        "aligngate_helper_failures_total",            # helper failures
        "aligngate_feedback_total",                   # feedback
        "vllm:num_requests_waiting",                  # vLLM queue depth
    }
    assert needed <= queried, sorted(needed - queried)
    per_arm = [expr for _, expr in _dashboard_exprs() if "aligngate_requests_total" in expr]
    assert any("by (arm)" in expr for expr in per_arm)


def test_dashboard_is_well_formed() -> None:
    dash = _dashboard()
    panels = _panels(dash)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    assert dash["uid"] and dash["title"]
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["query"] == "prometheus"
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}"
            for var in ("$model",):
                if var in target["expr"]:
                    assert var.lstrip("$") in variables
    # Panels do not overlap (rows are 1 high and span the width).
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        g = panel["gridPos"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"panel {panel['title']!r} overlaps another"
                cells.add((x, y))


def test_chart_ships_the_same_dashboard() -> None:
    assert (CHART / "files" / "aligngate.json").read_bytes() == DASHBOARD.read_bytes(), (
        "deploy/helm/aligngate/files/aligngate.json must be a copy of deploy/grafana/dashboards/aligngate.json"
    )


def test_prometheus_scrapes_the_compose_services() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    compose = load_compose()
    services = compose["services"]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert {"aligngate", "vllm"} <= set(jobs)
    gateway_config = yaml.safe_load((DEPLOY / "config" / "gateway.yaml").read_text())
    for name in ("aligngate", "vllm"):
        job = jobs[name]
        assert job.get("metrics_path", "/metrics") == "/metrics"
        for sd in job["dns_sd_configs"]:
            assert sd["type"] == "A"
            assert sd["port"] == (gateway_config["server"]["port"] if name == "aligngate" else 8000)
            for host in sd["names"]:
                assert host in services, f"prometheus job {name} scrapes {host}, not a compose service"
    gateways = {n for n in services if n.startswith("gateway-")}
    vllms = {n for n in services if n.startswith("vllm-")}
    assert gateways == set(jobs["aligngate"]["dns_sd_configs"][0]["names"])
    assert vllms == set(jobs["vllm"]["dns_sd_configs"][0]["names"])
    # The rules file it loads is the one compose mounts.
    mounts = services["prometheus"]["volumes"]
    for rule_file in config["rule_files"]:
        assert any(m.split(":")[1] == rule_file and (DEPLOY / m.split(":")[0]).is_file() for m in mounts), rule_file


def test_grafana_provisioning_matches_the_compose_mounts() -> None:
    provider = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "dashboards" / "aligngate.yaml").read_text())
    datasource = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yaml").read_text())
    grafana = load_compose()["services"]["grafana"]
    mounts = {m.split(":")[1]: m.split(":")[0] for m in grafana["volumes"] if m.startswith("./")}
    path = provider["providers"][0]["options"]["path"]
    assert mounts[path] == "./grafana/dashboards"
    assert (DEPLOY / "grafana" / "dashboards" / "aligngate.json").is_file()
    assert mounts["/etc/grafana/provisioning"] == "./grafana/provisioning"
    (source,) = datasource["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    assert grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"].startswith(path + "/")


@pytest.mark.parametrize("expr", [t["expr"] for p in _panels(_dashboard()) for t in p.get("targets", [])])
def test_dashboard_queries_use_rate_on_counters(expr: str) -> None:
    # A counter or histogram series queried raw plots an ever-growing line: it must sit inside rate()/increase().
    for metric in promql_use(expr).metrics:
        if metric.endswith(("_total", "_bucket", "_count", "_sum")):
            assert f"rate({metric}" in expr or f"increase({metric}" in expr, f"{metric} outside rate() in {expr}"
