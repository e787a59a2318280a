"""deploy/compose.yaml against the Compose specification (the compose-spec JSON schema, vendored in
tests/deploy/schemas from the check-jsonschema wheel), before and after interpolation with .env.example, and
against the rest of deploy/: the gateway configs, nginx, the vLLM flags the gateway relies on."""

from __future__ import annotations

import copy
import json
import re
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml

from gateway.config import load_settings
from tests.deploy.support import (
    DEPLOY,
    ROOT,
    SCHEMAS,
    InterpolationError,
    active_services,
    interpolate_tree,
    load_compose,
    read_env_file,
    variables,
)

#: Placeholders for the secrets .env.example leaves empty on purpose (compose refuses to start without them).
SECRETS = {
    "ALIGNGATE_API_KEYS": '["sha256:' + "ab" * 32 + '"]',
    "VLLM_API_KEY": "vllm-key",
    "HF_TOKEN": "hf_token",
    "POSTGRES_PASSWORD": "pgpassword0123",
    "GRAFANA_ADMIN_PASSWORD": "grafana-admin",
}
PROFILES = {"published": "./config/gateway.yaml", "lora": "./config/gateway-lora.yaml"}


@cache
def _validator() -> jsonschema.protocols.Validator:
    schema = json.loads((SCHEMAS / "compose-spec.json").read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def _errors(doc: Any) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in _validator().iter_errors(doc)]


def _env(**overrides: str) -> dict[str, str]:
    env = read_env_file(DEPLOY / ".env.example")
    env.update({k: v for k, v in SECRETS.items() if not env.get(k)})
    env.update(overrides)
    return env


def _resolved(profile: str = "published") -> dict[str, Any]:
    env = _env(COMPOSE_PROFILES=profile, ALIGNGATE_CONFIG_FILE=PROFILES[profile])
    resolved = interpolate_tree(load_compose(), env)
    assert isinstance(resolved, dict)
    return resolved


def _gateway_config(path: str) -> Any:
    return load_settings(DEPLOY / path)


def _command_flag(command: list[str], flag: str) -> str:
    return command[command.index(flag) + 1]


# ---------------------------------------------------------------------------------------------------------------
def test_compose_file_validates_against_the_compose_spec() -> None:
    assert _errors(load_compose()) == []


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_interpolated_compose_file_validates(profile: str) -> None:
    assert _errors(_resolved(profile)) == []


def test_schema_rejects_what_compose_rejects() -> None:
    # The vendored schema is strict: misspelled keys and wrong types fail, so the passing test above means something.
    doc = load_compose()
    typo = copy.deepcopy(doc)
    typo["services"]["lb"]["portz"] = typo["services"]["lb"].pop("ports")
    assert _errors(typo)
    wrong = copy.deepcopy(doc)
    wrong["services"]["postgres"]["healthcheck"] = "pg_isready"  # an object, not a string
    assert _errors(wrong)
    bad_depends = copy.deepcopy(doc)
    bad_depends["services"]["lb"]["depends_on"]["gateway-1"]["condition"] = "service_ready"
    assert _errors(bad_depends)


def test_every_variable_is_documented_in_env_example() -> None:
    documented = set(read_env_file(DEPLOY / ".env.example"))
    used = variables(load_compose())
    assert used - documented == set(), f"add these to deploy/.env.example: {sorted(used - documented)}"
    unused = documented - used - {"COMPOSE_PROFILES"}
    assert unused == set(), f"deploy/.env.example documents variables compose never reads: {sorted(unused)}"


def test_secrets_are_required_not_defaulted() -> None:
    # `${VAR:?...}`: compose refuses to start without them, instead of running with an empty key or password.
    text = (DEPLOY / "compose.yaml").read_text()
    for name in ("ALIGNGATE_API_KEYS", "VLLM_API_KEY", "POSTGRES_PASSWORD", "GRAFANA_ADMIN_PASSWORD"):
        assert re.search(r"\$\{" + name + r":\?", text), f"{name} must be required (${{{name}:?...}})"
        with pytest.raises(InterpolationError, match=name):
            interpolate_tree(load_compose(), _env(**{name: ""}))
    env_example = read_env_file(DEPLOY / ".env.example")
    for name in ("ALIGNGATE_API_KEYS", "VLLM_API_KEY", "POSTGRES_PASSWORD", "GRAFANA_ADMIN_PASSWORD", "HF_TOKEN"):
        assert env_example[name] == "", f".env.example must not ship a value for {name}"
    assert ".env" in (DEPLOY / ".gitignore").read_text().split()


def test_references_resolve() -> None:
    doc = _resolved()
    services = doc["services"]
    declared_volumes = set(doc.get("volumes", {}))
    for name, svc in services.items():
        for dep, spec in (svc.get("depends_on") or {}).items():
            assert dep in services, f"{name} depends on unknown service {dep}"
            if spec.get("condition") == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits for {dep} to be healthy; it has no healthcheck"
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith((".", "/", "~")):
                if "adapters" in source:  # the user's own LoRA adapters
                    continue
                assert (DEPLOY / source).exists(), f"{name} mounts {source}, which is not in deploy/"
            else:
                assert source in declared_volumes, f"{name} uses undeclared volume {source}"
        if "build" in svc:
            context = (DEPLOY / svc["build"]["context"]).resolve()
            assert context == ROOT
            assert (context / svc["build"]["dockerfile"]).is_file()


def test_gpu_services_reserve_gpus_and_run_vllm() -> None:
    doc = _resolved()
    for name in load_compose()["services"]:
        resolved = doc["services"][name]
        if not name.startswith("vllm-"):
            assert "deploy" not in resolved or "devices" not in str(resolved["deploy"]), f"{name} should not take a GPU"
            continue
        (device,) = resolved["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"] and device["device_ids"]
        assert resolved["entrypoint"] == ["vllm", "serve"]
        assert resolved["ipc"] == "host"
        command = resolved["command"]
        assert _command_flag(command, "--port") == "8000"
        assert 0 < float(_command_flag(command, "--gpu-memory-utilization")) <= 1
        assert any(v.endswith(":/root/.cache/huggingface") for v in resolved["volumes"]), f"{name}: no model cache"
        assert resolved["environment"]["VLLM_API_KEY"] == SECRETS["VLLM_API_KEY"]
        assert "/health" in " ".join(resolved["healthcheck"]["test"])


def test_aligner_uses_ngram_speculative_decoding() -> None:
    services = _resolved()["services"]
    for name in ("vllm-aligner", "vllm-helpers"):
        spec = json.loads(_command_flag(services[name]["command"], "--speculative-config"))
        assert spec["method"] == "ngram" and spec["num_speculative_tokens"] >= 1 and spec["prompt_lookup_max"] >= 1
    assert "--speculative-config" not in services["vllm-rewriter"]["command"]


def _served_names(command: list[str]) -> set[str]:
    names = {_command_flag(command, "--served-model-name")}
    if "--lora-modules" in command:
        start = command.index("--lora-modules") + 1
        for item in command[start:]:
            if item.startswith("--"):
                break
            module, _, path = item.partition("=")
            assert path.startswith("/adapters/"), item
            names.add(module)
    return names


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_gateway_config_matches_the_vllm_services(profile: str) -> None:
    """The config each profile mounts names services that run in that profile, under the names they serve."""
    doc = _resolved(profile)
    services = active_services(doc, {profile})
    settings = _gateway_config(PROFILES[profile])
    env = _env()
    for replica in ("gateway-1", "gateway-2"):
        mount = services[replica]["volumes"][0]
        assert mount == f"{PROFILES[profile]}:/etc/aligngate/config.yaml:ro"
    targets: list[tuple[str, str]] = [(url, b.name) for b in settings.backends for url in b.urls]
    for helper in ("rewriter", "aligner"):
        h = getattr(settings.helpers, helper)
        assert h is not None and h.url and h.model
        targets.append((h.url, h.model))
        assert h.api_key_env == "VLLM_API_KEY"
    for url, model in targets:
        parts = urlsplit(url)
        assert parts.hostname in services, f"{url}: {parts.hostname} is not running under profile {profile}"
        assert parts.port == 8000 and parts.path == "/v1"
        served = _served_names(services[parts.hostname]["command"])
        assert model in served, f"{parts.hostname} serves {sorted(served)}, the gateway asks for {model!r}"
    backend = settings.backends[0]
    assert backend.name == env["BACKEND_NAME"], "BACKEND_NAME in .env.example must match the config's backend"
    assert backend.api_key_env == "VLLM_API_KEY"
    assert settings.store.url.startswith("postgresql://") and urlsplit(settings.store.url).hostname == "postgres"


def test_gateway_replicas_get_secrets_and_their_own_spill_volume() -> None:
    services = _resolved()["services"]
    spills = set()
    for replica in ("gateway-1", "gateway-2"):
        svc = services[replica]
        environment = svc["environment"]
        keys = json.loads(environment["ALIGNGATE_SERVER__API_KEYS"])
        assert isinstance(keys, list) and keys
        store = urlsplit(environment["ALIGNGATE_STORE__URL"])
        assert store.scheme == "postgresql" and store.hostname == "postgres"
        assert store.password == SECRETS["POSTGRES_PASSWORD"]
        assert environment["VLLM_API_KEY"] == SECRETS["VLLM_API_KEY"]
        assert svc["read_only"] is True and svc["cap_drop"] == ["ALL"]
        (spill,) = [v for v in svc["volumes"] if v.endswith(":/var/lib/aligngate")]
        spills.add(spill.split(":")[0])
        assert svc["depends_on"]["postgres"]["condition"] == "service_healthy"
        # The gateway drains streams for server.graceful_timeout_s on SIGTERM; compose must wait longer.
        grace = int(svc["stop_grace_period"].rstrip("s"))
        settings = _gateway_config("config/gateway.yaml")
        assert grace > settings.server.graceful_timeout_s
        assert settings.store.spill_path and settings.store.spill_path.startswith("/var/lib/aligngate/")
    assert len(spills) == 2, "each replica needs its own spill volume"


def test_the_redis_profile_shares_the_rate_limit_buckets() -> None:
    doc = load_compose()
    assert "redis" not in active_services(doc, {"published"})
    assert "redis" in active_services(doc, {"published", "redis"})
    env = _env(COMPOSE_PROFILES="published,redis", ALIGNGATE_RATE_LIMIT_BACKEND="redis://redis:6379/0")
    services = interpolate_tree(doc, env)["services"]
    assert _errors({**doc, "services": services}) == []
    for replica in ("gateway-1", "gateway-2"):
        backend = urlsplit(services[replica]["environment"]["ALIGNGATE_SERVER__RATE_LIMITS__BACKEND"])
        assert backend.hostname == "redis" and backend.port == 6379
        assert "redis" not in services[replica].get("depends_on", {})  # optional: the gateways fail open
    command = services["redis"]["command"]
    assert command[command.index("--maxmemory-policy") + 1] == "volatile-ttl"
    assert _resolved()["services"]["gateway-1"]["environment"]["ALIGNGATE_SERVER__RATE_LIMITS__BACKEND"] == "memory"


def test_gateway_environment_overrides_resolve_with_the_config() -> None:
    """The replicas' env (secrets) on top of the mounted config is a valid, authenticated, Postgres-backed gateway."""
    services = _resolved()["services"]
    environment = dict(services["gateway-1"]["environment"])
    with pytest.MonkeyPatch.context() as mp:
        for key, value in environment.items():
            mp.setenv(key, value)
        settings = load_settings(DEPLOY / "config" / "gateway.yaml")
    assert settings.server.api_keys == json.loads(SECRETS["ALIGNGATE_API_KEYS"])
    assert settings.store.url == environment["ALIGNGATE_STORE__URL"]


def test_only_the_load_balancer_and_dashboards_publish_ports() -> None:
    services = _resolved()["services"]
    published = {name for name, svc in services.items() if svc.get("ports")}
    assert published == {"lb", "prometheus", "grafana"}
    for name in ("prometheus", "grafana"):
        for port in services[name]["ports"]:
            assert port.startswith("127.0.0.1:"), f"{name} should bind to loopback by default: {port}"


def test_nginx_balances_over_the_gateway_replicas() -> None:
    conf = (DEPLOY / "nginx" / "nginx.conf").read_text()
    services = load_compose()["services"]
    servers = re.findall(r"^\s*server\s+([\w.-]+):(\d+)\b", conf, re.M)
    assert {host for host, _ in servers} == {n for n in services if n.startswith("gateway-")}
    port = _gateway_config("config/gateway.yaml").server.port
    assert {int(p) for _, p in servers} == {port}
    assert re.search(r"^\s*listen\s+8080;", conf, re.M)
    assert services["lb"]["ports"][0].endswith(":8080")
    assert "proxy_buffering off;" in conf  # SSE streams pass through chunk by chunk
    read_timeout = int(re.search(r"proxy_read_timeout\s+(\d+)s;", conf).group(1))  # type: ignore[union-attr]
    assert read_timeout > _gateway_config("config/gateway.yaml").backends[0].timeout_s
    assert conf.count("{") == conf.count("}")
    assert (DEPLOY / "nginx" / "nginx.conf") in {
        DEPLOY / Path(v.split(":")[0]) for v in services["lb"]["volumes"]
    }


def test_profiles_select_one_helper_flavour() -> None:
    doc = load_compose()
    published = set(active_services(doc, {"published"}))
    lora = set(active_services(doc, {"lora"}))
    assert {"vllm-rewriter", "vllm-aligner"} <= published and "vllm-helpers" not in published
    assert "vllm-helpers" in lora and not {"vllm-rewriter", "vllm-aligner"} & lora
    assert read_env_file(DEPLOY / ".env.example")["COMPOSE_PROFILES"] in PROFILES
    assert yaml.safe_load((DEPLOY / "config" / "gateway.yaml").read_text())["helpers"]
