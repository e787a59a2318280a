"""The Helm chart deploy/helm/aligngate, rendered offline by Helm itself (helm-python-sdk: Helm v4's Go SDK
through ctypes, no helm binary, no cluster) for several value sets; every manifest validated against the
Kubernetes JSON schemas of kubernetes-validate (strict: unknown fields fail) at the oldest and newest versions
the chart supports; the gateway config the chart generates loaded with the gateway's own loader."""

from __future__ import annotations

import copy
import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml

from gateway.config import Settings, check_servable, load_settings
from tests.deploy.support import CHART, SCHEMAS, manifests, resolve_env

helm = pytest.importorskip("helm_python", reason="helm-python-sdk (dev extra) renders the chart")
kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate (dev extra)")

RELEASE, NAMESPACE = "rel", "prod"
#: Kubernetes versions to validate against: the chart's floor (Chart.yaml kubeVersion) and the newest known.
K8S_VERSIONS = ("1.25.0", kubernetes_validate.latest_version())

SCENARIOS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "published-helpers-everything-on": {
        "secrets": {"apiKeys": ["sk-one", "sha256:" + "ab" * 32], "hfToken": "hf_x"},
        "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
        "grafanaDashboard": {"enabled": True},
        "redis": {"enabled": True},
        "ingress": {"enabled": True, "className": "nginx", "tls": [{"secretName": "tls", "hosts": ["a.example.com"]}]},
        "vllm": {"backend": {"replicas": 2, "gpus": 2}, "modelCache": {"existingClaim": "hf-cache"}},
    },
    "lora-helpers": {
        "helpers": {"mode": "lora"},
        "vllm": {"helpers": {"adaptersClaim": "helper-adapters"}, "modelCache": {"accessModes": ["ReadWriteOnce"]}},
        "gateway": {"autoscaling": {"enabled": False}, "replicas": 3},
    },
    "external-everything": {
        "helpers": {"mode": "none"},
        "vllm": {"backend": {"enabled": False}},
        "postgresql": {"enabled": False},
        "externalDatabase": {"url": "postgresql://gw:secret@db.internal:5432/aligngate"},
        "secrets": {"generateVllmApiKey": False},
        "config": {
            "backends": [{"name": "hosted-llama", "urls": ["https://llm.internal/v1", "https://llm2.internal/v1"]}],
            "experiment": {"name": "control-only", "arms": {"control": 1}},
        },
    },
    "existing-secrets": {
        "secrets": {"existingSecret": "aligngate-keys"},
        "postgresql": {"enabled": False},
        "externalDatabase": {"existingSecret": "db-url", "existingSecretKey": "url"},
        "gateway": {"autoscaling": {"enabled": False}, "replicas": 1},
    },
}


@cache
def _render_cached(values_json: str) -> dict[str, str]:
    with helm.Chart.load(str(CHART)) as chart:
        rendered: dict[str, str] = chart.render(json.loads(values_json), name=RELEASE, namespace=NAMESPACE)
        return rendered


def render(values: dict[str, Any]) -> dict[str, str]:
    return _render_cached(json.dumps(values, sort_keys=True))


@cache
def _objects_cached(values_json: str) -> tuple[dict[str, Any], ...]:
    return tuple(doc for _, doc in manifests(_render_cached(values_json)))


def objects(values: dict[str, Any]) -> list[dict[str, Any]]:
    """The rendered objects (shared between tests: deep-copy before changing one)."""
    return list(_objects_cached(json.dumps(values, sort_keys=True)))


def by_kind(objs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objs if o["kind"] == kind}


@contextmanager
def no_aligngate_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for key in list(os.environ):
        if key.startswith("ALIGNGATE_"):
            monkeypatch.delenv(key)
    yield


def _secrets(objs: list[dict[str, Any]]) -> dict[tuple[str, str], str]:
    """Values of the Secrets the release renders, plus stand-ins for the existing Secrets a scenario names."""
    import base64

    out: dict[tuple[str, str], str] = {}
    for name, secret in by_kind(objs, "Secret").items():
        for key, value in (secret.get("data") or {}).items():
            out[(name, key)] = base64.b64decode(value).decode()
    out.update({("aligngate-keys", "api-keys"): '["sk-from-vault"]', ("aligngate-keys", "vllm-api-key"): "k",
                ("aligngate-keys", "hf-token"): "", ("db-url", "url"): "postgresql://u:p@db:5432/aligngate"})
    return out


def gateway_settings(
    values: dict[str, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> tuple[Settings, dict[str, str]]:
    """The settings a gateway pod resolves: the ConfigMap's config.yaml plus the container's environment."""
    objs = objects(values)
    deployment = by_kind(objs, "Deployment")[f"{RELEASE}-aligngate"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    config_map = by_kind(objs, "ConfigMap")[f"{RELEASE}-aligngate"]
    env = resolve_env(container["env"], _secrets(objs))
    with no_aligngate_env(monkeypatch):
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        path = tmp_path / "config.yaml"
        path.write_text(config_map["data"]["config.yaml"])
        settings = load_settings(path)
    return settings, env


# ---------------------------------------------------------------------------------------------------------------
def test_helm_lint_is_clean() -> None:
    for values in ({}, SCENARIOS["lora-helpers"]):
        report = helm.lint(str(CHART), values, strict=True, kube_version="v1.25.0", with_subcharts=True)
        problems = [m for m in report["messages"] if m["severity"] >= 2] + report.get("errors", [])
        assert not problems, problems


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_rendered_manifests_validate_against_kubernetes_schemas(scenario: str) -> None:
    objs = objects(SCENARIOS[scenario])
    assert objs
    problems = []
    for obj in objs:
        if obj["kind"] == "ServiceMonitor":
            continue  # a CRD: checked against its own schema below
        for version in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                problems.append(f"{obj['kind']}/{obj['metadata']['name']} @ {version}: "
                                f"{'.'.join(map(str, exc.path))}: {exc.message}")
    assert not problems, "\n".join(problems)


def test_strict_validation_catches_a_misspelt_field() -> None:
    deployment = copy.deepcopy(by_kind(objects({}), "Deployment")[f"{RELEASE}-aligngate"])
    probe = deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]
    probe["httpGet"]["paht"] = probe["httpGet"].pop("path")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[-1], strict=True)


def test_every_kind_we_need_is_rendered() -> None:
    kinds = {(o["apiVersion"], o["kind"]) for o in objects(SCENARIOS["published-helpers-everything-on"])}
    assert {
        ("apps/v1", "Deployment"), ("v1", "Service"), ("v1", "ConfigMap"), ("v1", "Secret"),
        ("autoscaling/v2", "HorizontalPodAutoscaler"), ("policy/v1", "PodDisruptionBudget"),
        ("apps/v1", "StatefulSet"), ("monitoring.coreos.com/v1", "ServiceMonitor"),
        ("networking.k8s.io/v1", "Ingress"), ("v1", "ServiceAccount"),
    } <= kinds


def test_values_schema_rejects_bad_values() -> None:
    with helm.Chart.load(str(CHART)) as chart:
        chart.validate_schema({})
        for bad in ({"gatway": {}}, {"helpers": {"mode": "both"}}, {"gateway": {"replicas": "two"}},
                    {"vllm": {"backend": {"gpuMemoryUtilization": 1.5}}}, {"config": {"experimnet": {}}},
                    {"externalDatabase": {"url": "mysql://db/x"}}, {"postgresql": {"auth": {"password": "p@ss/word"}}}):
            with pytest.raises(helm.HelmError):
                chart.validate_schema(bad)
            with pytest.raises(helm.HelmError):
                chart.render(bad, name=RELEASE)


def test_render_refuses_incomplete_setups() -> None:
    with pytest.raises(helm.HelmError, match="adaptersClaim"):
        render({"helpers": {"mode": "lora"}})
    with pytest.raises(helm.HelmError, match="no shared store"):
        render({"postgresql": {"enabled": False}})
    # What the gateway would refuse at start (check_servable) fails at render time instead of crash-looping.
    with pytest.raises(helm.HelmError, match='arm "align" needs an aligner'):
        render({"helpers": {"mode": "none"}, "config": {"experiment": {"arms": {"control": 1, "align": 1}}}})


def test_arms_default_to_what_the_helpers_allow(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    settings, _ = gateway_settings({}, monkeypatch, tmp_path)
    assert settings.experiment.arms == {"control": 1, "rewrite": 1, "align": 1, "rewrite+align": 1}
    settings, _ = gateway_settings(SCENARIOS["external-everything"], monkeypatch, tmp_path)
    assert settings.experiment.arms == {"control": 1}
    # Arms given in the values replace the default set (Helm merges maps, so the default has to be empty).
    arms = {"control": 3, "rewrite+align": 1}
    settings, _ = gateway_settings({"config": {"experiment": {"arms": arms}}}, monkeypatch, tmp_path)
    assert settings.experiment.arms == arms


def test_values_are_commented_field_by_field() -> None:
    lines = (CHART / "values.yaml").read_text().splitlines()
    missing = []
    for number, line in enumerate(lines):
        match = re.match(r"^(\s*)(?:- )?([A-Za-z_][\w.+-]*):", line)
        if not match or line.lstrip().startswith("#"):
            continue
        # The comment block right above the key (or the `- # --` of the list item it opens) documents it.
        block, i = [], number - 1
        while i >= 0 and lines[i].strip().startswith(("#", "- #")):
            block.append(lines[i].strip())
            i -= 1
        if not any(c.startswith(("# --", "- # --")) for c in block):
            missing.append(f"values.yaml:{number + 1}: {line.strip()}")
    assert not missing, "every field needs a `# --` comment above it:\n" + "\n".join(missing)


def test_values_schema_covers_every_value() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def walk(node: Any, sub: dict[str, Any], path: str) -> Iterator[str]:
        if isinstance(node, dict) and sub.get("additionalProperties") is False:
            for key, value in node.items():
                if key not in sub.get("properties", {}):
                    yield f"{path}.{key}"
                else:
                    yield from walk(value, sub["properties"][key], f"{path}.{key}")

    assert list(walk(values, schema, "")) == []
    jsonschema.Draft7Validator(schema).validate(values)


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_generated_gateway_config_loads_with_the_pod_environment(
    scenario: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    settings, env = gateway_settings(SCENARIOS[scenario], monkeypatch, tmp_path)
    check_servable(settings)  # no `local:`: the torch-free gateway image serves it
    assert settings.server.host == "0.0.0.0" and settings.server.port == 8000
    assert urlsplit(settings.store.url).scheme == "postgresql", "replicas must share a database, not SQLite"
    assert settings.store.spill_path and settings.store.spill_path.startswith("/var/lib/aligngate/")
    for backend in settings.backends:
        if backend.api_key_env:
            assert env.get(backend.api_key_env), f"{backend.api_key_env} is not set in the gateway pod"
    for helper in (settings.helpers.rewriter, settings.helpers.aligner):
        if helper is not None and helper.api_key_env:
            assert env.get(helper.api_key_env)


def test_bundled_postgres_url_reaches_the_bundled_service(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    settings, _ = gateway_settings({}, monkeypatch, tmp_path)
    url = urlsplit(settings.store.url)
    objs = objects({})
    (service,) = [s for s in by_kind(objs, "Service").values() if s["metadata"]["labels"].get("app.kubernetes.io/name")
                  == "postgresql"]
    assert url.hostname == service["metadata"]["name"] and url.port == service["spec"]["ports"][0]["port"]
    statefulset = by_kind(objs, "StatefulSet")[service["metadata"]["name"]]
    pg_env = {e["name"]: e for e in statefulset["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert url.username == pg_env["POSTGRES_USER"]["value"] and url.path == "/" + pg_env["POSTGRES_DB"]["value"]
    secret = _secrets(objs)[(f"{RELEASE}-postgresql", "password")]
    assert url.password == secret and len(secret) >= 24
    annotations = by_kind(objs, "Secret")[f"{RELEASE}-postgresql"]["metadata"]["annotations"]
    assert annotations["helm.sh/resource-policy"] == "keep"


def test_redis_enabled_is_the_rate_limit_backend(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    settings, _ = gateway_settings({}, monkeypatch, tmp_path)
    assert settings.server.rate_limits.backend == "memory"
    assert not [o for o in objects({}) if o["metadata"]["labels"].get("app.kubernetes.io/component") == "redis"]
    values = SCENARIOS["published-helpers-everything-on"]
    settings, _ = gateway_settings(values, monkeypatch, tmp_path)
    url = urlsplit(settings.server.rate_limits.backend)
    objs = objects(values)
    service = by_kind(objs, "Service")[url.hostname or ""]
    assert url.scheme == "redis" and url.port == service["spec"]["ports"][0]["port"]
    pod = by_kind(objs, "Deployment")[url.hostname or ""]["spec"]["template"]
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    args = pod["spec"]["containers"][0]["args"]
    assert args[args.index("--maxmemory-policy") + 1] == "volatile-ttl"  # evicts buckets, which all expire
    # limits given in the values keep the chart's backend
    values = {**values, "config": {"server": {"rate_limits": {"per_key": {"requests_per_minute": 60}}}}}
    settings, _ = gateway_settings(values, monkeypatch, tmp_path)
    assert settings.server.rate_limits.backend == f"redis://{url.hostname}:6379/0"
    assert settings.server.rate_limits.per_key.requests_per_minute == 60


@pytest.mark.parametrize("scenario", ["defaults", "lora-helpers", "published-helpers-everything-on"])
def test_gateway_targets_the_vllm_services_by_their_served_names(
    scenario: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    settings, env = gateway_settings(SCENARIOS[scenario], monkeypatch, tmp_path)
    objs = objects(SCENARIOS[scenario])
    services = by_kind(objs, "Service")
    deployments = by_kind(objs, "Deployment")
    targets = [(url, b.name) for b in settings.backends for url in b.urls]
    targets += [(h.url, h.model) for h in (settings.helpers.rewriter, settings.helpers.aligner) if h and h.url]
    assert len(targets) == 3
    for url, model in targets:
        host = urlsplit(url).hostname
        assert host in services, f"{url}: no Service {host}"
        assert urlsplit(url).port == services[host]["spec"]["ports"][0]["port"]
        args = deployments[host]["spec"]["template"]["spec"]["containers"][0]["args"]
        served = {args[args.index("--served-model-name") + 1]}
        if "--lora-modules" in args:
            served |= {a.split("=")[0] for a in args[args.index("--lora-modules") + 1 :] if "=" in a}
        assert model in served, f"{host} serves {sorted(served)}; the gateway asks for {model}"
        vllm_env = {e["name"] for e in deployments[host]["spec"]["template"]["spec"]["containers"][0]["env"]}
        assert ("VLLM_API_KEY" in vllm_env) == bool(env.get("VLLM_API_KEY")), "gateway and vLLM must agree on a key"


def test_vllm_deployments_take_gpus_probes_and_the_model_cache() -> None:
    for scenario in ("defaults", "lora-helpers", "published-helpers-everything-on"):
        objs = objects(SCENARIOS[scenario])
        claims = set(by_kind(objs, "PersistentVolumeClaim")) | {"hf-cache"}
        vllm = {n: d for n, d in by_kind(objs, "Deployment").items() if "-vllm-" in n}
        assert vllm
        for name, deployment in vllm.items():
            pod = deployment["spec"]["template"]["spec"]
            (container,) = pod["containers"]
            gpus = container["resources"]["limits"]["nvidia.com/gpu"]
            assert gpus >= 1 and container["resources"]["requests"]["nvidia.com/gpu"] == gpus
            if gpus > 1:
                args = container["args"]
                assert args[args.index("--tensor-parallel-size") + 1] == str(gpus)
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                assert container[probe]["httpGet"]["path"] == "/health", f"{name} {probe}"
            startup = container["startupProbe"]
            assert startup["periodSeconds"] * startup["failureThreshold"] >= 900, "weights take minutes to load"
            volumes = {v["name"]: v for v in pod["volumes"]}
            assert volumes["model-cache"]["persistentVolumeClaim"]["claimName"] in claims
            assert volumes["shm"]["emptyDir"]["medium"] == "Memory"
            mounts = {m["mountPath"] for m in container["volumeMounts"]}
            assert {"/root/.cache/huggingface", "/dev/shm"} <= mounts
            assert deployment["spec"]["strategy"]["rollingUpdate"]["maxSurge"] == 0, "a surge pod needs a spare GPU"
            assert any(t.get("key") == "nvidia.com/gpu" for t in pod.get("tolerations", []))


def test_aligner_gets_ngram_speculative_decoding_and_lora_gets_its_adapters() -> None:
    published = by_kind(objects({}), "Deployment")
    aligner = published[f"{RELEASE}-aligngate-vllm-aligner"]["spec"]["template"]["spec"]["containers"][0]["args"]
    spec = json.loads(aligner[aligner.index("--speculative-config") + 1])
    assert spec == {"method": "ngram", "num_speculative_tokens": 5, "prompt_lookup_max": 4}
    rewriter = published[f"{RELEASE}-aligngate-vllm-rewriter"]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--speculative-config" not in rewriter
    lora = by_kind(objects(SCENARIOS["lora-helpers"]), "Deployment")[f"{RELEASE}-aligngate-vllm-helpers"]
    pod = lora["spec"]["template"]["spec"]
    args = pod["containers"][0]["args"]
    assert "--enable-lora" in args and "--speculative-config" in args
    modules = args[args.index("--lora-modules") + 1 :]
    assert sorted(modules) == ["aligner=/adapters/aligner", "rewriter=/adapters/rewriter"]
    adapters = {v["name"]: v for v in pod["volumes"]}["adapters"]["persistentVolumeClaim"]
    assert adapters == {"claimName": "helper-adapters", "readOnly": True}
    assert int(args[args.index("--max-loras") + 1]) == 2
    assert {f"{RELEASE}-aligngate-vllm-rewriter", f"{RELEASE}-aligngate-vllm-aligner"}.isdisjoint(
        by_kind(objects(SCENARIOS["lora-helpers"]), "Deployment"))


def test_gateway_pods_probe_drain_and_run_locked_down() -> None:
    objs = objects({})
    deployment = by_kind(objs, "Deployment")[f"{RELEASE}-aligngate"]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    port = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert port["http"] == 8000
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    config = yaml.safe_load(by_kind(objs, "ConfigMap")[f"{RELEASE}-aligngate"]["data"]["config.yaml"])
    grace = pod["terminationGracePeriodSeconds"]
    pre_stop = int(container["lifecycle"]["preStop"]["exec"]["command"][1])
    assert grace > pre_stop + config["server"]["graceful_timeout_s"], "streams must finish before SIGKILL"
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 10001
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert {"/etc/aligngate", "/tmp", "/var/lib/aligngate"} <= set(mounts)
    assert container["args"] == ["--config", "/etc/aligngate/config.yaml"]
    assert "config.yaml" in by_kind(objs, "ConfigMap")[f"{RELEASE}-aligngate"]["data"]


def test_selectors_match_their_pods() -> None:
    for scenario in SCENARIOS:
        objs = objects(SCENARIOS[scenario])
        workloads = [o for o in objs if o["kind"] in ("Deployment", "StatefulSet")]
        pod_labels = [w["spec"]["template"]["metadata"]["labels"] for w in workloads]
        for workload in workloads:
            selector = workload["spec"]["selector"]["matchLabels"]
            assert selector.items() <= workload["spec"]["template"]["metadata"]["labels"].items()
        for name, service in by_kind(objs, "Service").items():
            selector = service["spec"]["selector"]
            matched = [labels for labels in pod_labels if selector.items() <= labels.items()]
            assert len(matched) == 1, f"Service {name} selects {len(matched)} workloads"
        for pdb in by_kind(objs, "PodDisruptionBudget").values():
            selector = pdb["spec"]["selector"]["matchLabels"]
            assert len([labels for labels in pod_labels if selector.items() <= labels.items()]) == 1
        for hpa in by_kind(objs, "HorizontalPodAutoscaler").values():
            target = hpa["spec"]["scaleTargetRef"]
            assert target["name"] in by_kind(objs, target["kind"])
            assert "replicas" not in by_kind(objs, "Deployment")[target["name"]]["spec"], "the HPA owns replicas"


def test_autoscaling_and_disruption_budget() -> None:
    objs = objects({})
    hpa = by_kind(objs, "HorizontalPodAutoscaler")[f"{RELEASE}-aligngate"]
    assert hpa["spec"]["minReplicas"] >= 2
    assert by_kind(objs, "PodDisruptionBudget")[f"{RELEASE}-aligngate"]["spec"]["minAvailable"] == 1
    # One replica: a PDB of minAvailable 1 would block every node drain, so none is rendered.
    assert by_kind(objects(SCENARIOS["existing-secrets"]), "PodDisruptionBudget") == {}


def test_config_changes_roll_every_gateway_pod() -> None:
    # All replicas must serve the same experiment (arm assignment is computed from it): a config change changes the
    # pod template, so the Deployment replaces every pod.
    def annotations(values: dict[str, Any]) -> dict[str, str]:
        deployment = by_kind(objects(values), "Deployment")[f"{RELEASE}-aligngate"]
        return deployment["spec"]["template"]["metadata"]["annotations"]

    base = annotations({})
    renamed = annotations({"config": {"experiment": {"name": "helpers-v2"}}})
    assert base["checksum/config"] != renamed["checksum/config"]
    rekeyed = annotations({"secrets": {"apiKeys": ["sk-new"]}})
    assert base["checksum/secret"] != rekeyed["checksum/secret"]


def test_servicemonitor_validates_and_selects_gateway_and_vllm() -> None:
    objs = objects(SCENARIOS["published-helpers-everything-on"])
    (monitor,) = by_kind(objs, "ServiceMonitor").values()
    schema = json.loads((SCHEMAS / "servicemonitor.schema.json").read_text())
    jsonschema.Draft7Validator(schema).validate(monitor)
    bad = copy.deepcopy(monitor)
    bad["spec"]["endpoints"][0]["intervall"] = "15s"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft7Validator(schema).validate(bad)
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    selector = monitor["spec"]["selector"]["matchLabels"]
    selected = {n for n, s in by_kind(objs, "Service").items() if selector.items() <= s["metadata"]["labels"].items()}
    vllm = {f"{RELEASE}-aligngate-vllm-{k}" for k in ("backend", "rewriter", "aligner")}
    assert selected == {f"{RELEASE}-aligngate", *vllm}
    ports = {e["port"] for e in monitor["spec"]["endpoints"]}
    for name in selected:
        assert ports <= {p["name"] for p in by_kind(objs, "Service")[name]["spec"]["ports"]}
    assert {e["path"] for e in monitor["spec"]["endpoints"]} == {"/metrics"}
    assert monitor["spec"]["namespaceSelector"]["matchNames"] == [NAMESPACE]


def test_grafana_dashboard_configmap_holds_the_dashboard() -> None:
    objs = objects(SCENARIOS["published-helpers-everything-on"])
    config_map = by_kind(objs, "ConfigMap")[f"{RELEASE}-aligngate-dashboard"]
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(config_map["data"]["aligngate.json"])
    assert dashboard["uid"] == "aligngate-overview"


def test_secrets_never_reach_the_configmap(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    values = SCENARIOS["published-helpers-everything-on"] | {"externalDatabase": {"url": ""}}
    objs = objects(values)
    config = by_kind(objs, "ConfigMap")[f"{RELEASE}-aligngate"]["data"]["config.yaml"]
    for secret in ("sk-one", "hf_x", *(v for (_, _), v in _secrets(objs).items() if len(v) > 8)):
        assert secret not in config
    settings, _ = gateway_settings(values, monkeypatch, tmp_path)
    assert settings.server.api_keys == ["sk-one", "sha256:" + "ab" * 32]
