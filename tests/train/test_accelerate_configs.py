"""train/accelerate/*.yaml: each config goes through accelerate's own loader and launcher preparation (what
`accelerate launch --config_file FILE` does before it starts processes), and the DeepSpeed/FSDP plugin the
training processes build from it accepts the result. No GPU and no DeepSpeed install needed."""

from __future__ import annotations

import argparse
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

pytest.importorskip("accelerate")

from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from accelerate.utils import DeepSpeedPlugin, DistributedType, FullyShardedDataParallelPlugin
from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "train" / "accelerate"
NAMES = ["zero2", "zero3", "fsdp", "multi-node"]


def _path(name: str) -> Path:
    return CONFIGS / f"{name}.yaml"


def _launch(name: str, *flags: str) -> tuple[argparse.Namespace, dict[str, str]]:
    """(launcher arguments, environment of the training processes), as `accelerate launch` prepares them."""
    argv = ["--config_file", str(_path(name)), *flags, "-m", "train.dpo", "train/recipes/dpo-7b.yaml"]
    args, defaults, mp_from_config = _validate_launch_command(launch_command_parser().parse_args(argv))
    if args.use_deepspeed:  # as accelerate.commands.launch.launch_command does before deepspeed_launcher
        fields = list(defaults.deepspeed_config) + (["mixed_precision"] if mp_from_config else [])
        args.deepspeed_fields_from_accelerate_config = ",".join(fields)
        _, env = prepare_deepspeed_cmd_env(args)
    else:
        env = prepare_multi_gpu_env(args)
    return args, env


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """The launcher's variables set for one test only; transformers' global DeepSpeed config undone after it."""
    yield monkeypatch
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()


def _apply(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in env.items():
        if key.startswith(("ACCELERATE_", "FSDP_")):
            monkeypatch.setenv(key, value)


@pytest.mark.parametrize("name", NAMES)
def test_accelerate_loads_the_config(name: str) -> None:
    raw = yaml.safe_load(_path(name).read_text(encoding="utf-8"))
    config = load_config_from_file(str(_path(name)))  # raises on an unknown top-level key
    assert isinstance(config, ClusterConfig)
    assert config.mixed_precision == "bf16"
    assert config.use_cpu is False
    # nested keys are not checked by the loader: each must be a flag `accelerate launch` knows
    known = {action.dest for action in launch_command_parser()._actions}
    for section in ("deepspeed_config", "fsdp_config"):
        for key in raw.get(section, {}):
            flag = key if section == "deepspeed_config" or key.startswith("fsdp") else f"fsdp_{key}"
            assert flag in known, f"{name}.yaml: {section}.{key} is not an accelerate launch option"


@pytest.mark.parametrize("name", ["zero2", "zero3"])
def test_deepspeed_single_node(name: str, clean_env: pytest.MonkeyPatch) -> None:
    config = load_config_from_file(str(_path(name)))
    assert config.distributed_type == DistributedType.DEEPSPEED
    assert config.num_machines == 1
    ds = config.deepspeed_config
    # left to the recipe: DeepSpeed fills "auto" from the TrainingArguments (a fixed value here would conflict)
    assert "gradient_accumulation_steps" not in ds and "gradient_clipping" not in ds
    args, env = _launch(name)
    assert args.use_deepspeed and args.nproc_per_node == str(config.num_processes)
    _apply(env, clean_env)
    plugin = DeepSpeedPlugin()
    zero = plugin.deepspeed_config["zero_optimization"]
    assert plugin.deepspeed_config["gradient_accumulation_steps"] == "auto"
    if name == "zero2":
        assert zero["stage"] == 2 and plugin.zero3_init_flag is False
    else:
        assert zero["stage"] == 3 and plugin.zero3_init_flag is True
        assert ds["zero3_save_16bit_model"] is True
        assert zero["stage3_gather_16bit_weights_on_model_save"] is True


def test_fsdp(clean_env: pytest.MonkeyPatch) -> None:
    config = load_config_from_file(str(_path("fsdp")))
    assert config.distributed_type == DistributedType.FSDP
    fsdp: dict[str, Any] = config.fsdp_config
    assert fsdp["fsdp_version"] == 2
    assert fsdp["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    assert fsdp["fsdp_transformer_layer_cls_to_wrap"] == "LlamaDecoderLayer"
    args, env = _launch("fsdp")
    assert args.use_fsdp and env["FSDP_VERSION"] == "2"
    _apply(env, clean_env)
    plugin = FullyShardedDataParallelPlugin()  # the training process's view: validates every value
    assert plugin.fsdp_version == 2
    assert plugin.reshard_after_forward is True
    assert plugin.transformer_cls_names_to_wrap == ["LlamaDecoderLayer"]
    # FULL_STATE_DICT: transformers' Trainer.save_model writes no weights under FSDP otherwise
    assert "FULL_STATE_DICT" in str(plugin.state_dict_type)
    assert plugin.activation_checkpointing is False  # the 7B recipes' gradient_checkpointing is used instead


def test_multi_node(clean_env: pytest.MonkeyPatch) -> None:
    config = load_config_from_file(str(_path("multi-node")))
    assert config.distributed_type == DistributedType.DEEPSPEED
    assert (config.num_machines, config.num_processes, config.machine_rank) == (2, 16, 0)
    assert config.main_process_ip and config.main_process_port == 29500
    assert config.deepspeed_config["deepspeed_multinode_launcher"] == "standard"
    args, env = _launch("multi-node", "--machine_rank", "1", "--main_process_ip", "10.1.2.3")
    # each node starts its own 8 processes (torchrun), rank 1 of 2, meeting at node 0's address
    assert (args.nproc_per_node, args.nnodes, args.node_rank) == ("8", "2", 1)
    assert "10.1.2.3" in (getattr(args, "rdzv_endpoint", None) or getattr(args, "master_addr", ""))
    _apply(env, clean_env)
    assert DeepSpeedPlugin().deepspeed_config["zero_optimization"]["stage"] == 3


def test_the_configs_ship_with_the_package() -> None:
    names = sorted(p.stem for p in CONFIGS.glob("*.yaml"))
    assert names == sorted(NAMES)
    data = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert "accelerate/*.yaml" in data["tool"]["setuptools"]["package-data"]["train"]
