"""``models.adapters``: built-in names resolve to the shipped directories, and a missing, unreadable or truncated
adapter is an :class:`AdapterError` with the reason (checked from the files alone, before any model loads), and so
is one whose LoRA shapes do not fit its base model's layer sizes."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from models.adapters import (
    BUILTIN_ADAPTERS,
    CONFIG_FILE,
    WEIGHTS_FILE,
    AdapterError,
    check_adapter,
    check_fits,
    resolve_adapter,
)


def write_adapter(root: Path, tensors: int = 2, floats: int = 6) -> Path:
    """A minimal peft-shaped directory: a LoRA config and a safetensors file of ``tensors`` fp32 tensors."""
    root.mkdir(parents=True)
    (root / CONFIG_FILE).write_text(json.dumps({"peft_type": "LORA", "r": 2}))
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for i in range(tensors):
        end = offset + 4 * floats
        header[f"layer.{i}.lora_A.weight"] = {"dtype": "F32", "shape": [floats], "data_offsets": [offset, end]}
        offset += 4 * floats
    head = json.dumps(header).encode()
    (root / WEIGHTS_FILE).write_bytes(struct.pack("<Q", len(head)) + head + bytes(offset))
    return root


def test_a_well_formed_directory_passes(tmp_path: Path) -> None:
    path = write_adapter(tmp_path / "a")
    assert check_adapter(path) == path
    assert check_adapter(str(path)) == path


@pytest.mark.parametrize("name", sorted(BUILTIN_ADAPTERS))
def test_every_builtin_adapter_ships_whole(name: str) -> None:
    """The shipped adapters are in the package, readable, and each has its model card."""
    path = check_adapter(f"builtin:{name}")
    assert path == resolve_adapter(f"builtin:{name}") == BUILTIN_ADAPTERS[name].path
    card = (path / "README.md").read_text(encoding="utf-8")
    for needed in ("## Data", "## Recipe", "## Measured", "Licen"):
        assert needed in card, f"{name}'s model card has no {needed!r}"
    config = json.loads((path / CONFIG_FILE).read_text())
    assert config["peft_type"] == "LORA"


def test_an_unknown_builtin_names_the_known_ones() -> None:
    with pytest.raises(AdapterError, match="unknown built-in adapter 'builtin:nope'; known: builtin:aligner-"):
        resolve_adapter("builtin:nope")


def test_a_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(AdapterError, match="no such directory"):
        check_adapter(tmp_path / "absent")


def test_a_directory_without_config(tmp_path: Path) -> None:
    path = write_adapter(tmp_path / "a")
    (path / CONFIG_FILE).unlink()
    with pytest.raises(AdapterError, match="not a peft adapter directory"):
        check_adapter(path)


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '{"r": 2}'])
def test_an_unreadable_config(tmp_path: Path, text: str) -> None:
    path = write_adapter(tmp_path / "a")
    (path / CONFIG_FILE).write_text(text)
    with pytest.raises(AdapterError, match=CONFIG_FILE):
        check_adapter(path)


def test_missing_weights(tmp_path: Path) -> None:
    path = write_adapter(tmp_path / "a")
    (path / WEIGHTS_FILE).unlink()
    with pytest.raises(AdapterError, match=f"has no {WEIGHTS_FILE}"):
        check_adapter(path)


def test_truncated_weights(tmp_path: Path) -> None:
    """A copy cut short (a failed download, a full disk) fails on its size, not later inside torch."""
    path = write_adapter(tmp_path / "a")
    data = (path / WEIGHTS_FILE).read_bytes()
    (path / WEIGHTS_FILE).write_bytes(data[:-5])
    with pytest.raises(AdapterError, match="truncated or corrupt"):
        check_adapter(path)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x01\x02",
        struct.pack("<Q", 1 << 40) + b"{}",
        struct.pack("<Q", 4) + b"nope",
        struct.pack("<Q", 2) + b"{}",
    ],
    ids=["empty", "short", "huge-header", "bad-json", "no-tensors"],
)
def test_corrupt_weights(tmp_path: Path, data: bytes) -> None:
    path = write_adapter(tmp_path / "a")
    (path / WEIGHTS_FILE).write_bytes(data)
    with pytest.raises(AdapterError, match=WEIGHTS_FILE):
        check_adapter(path)


#: SmolLM2-135M's sizes, as its config.json gives them.
SMOLLM2 = {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
           "num_key_value_heads": 3}


@pytest.mark.parametrize("name", sorted(BUILTIN_ADAPTERS))
def test_every_builtin_adapter_fits_its_base(name: str) -> None:
    check_fits(f"builtin:{name}", SMOLLM2, "builtin:smollm2-135m-instruct")


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 4}, "the base's k_proj takes 64"),
        ({"num_hidden_layers": 2}, "the base has 2"),
        ({"num_key_value_heads": 9}, "the base's k_proj takes 576"),
    ],
    ids=["hidden", "layers", "kv-heads"],
)
def test_an_adapter_for_another_base_does_not_fit(change: dict[str, int], reason: str) -> None:
    with pytest.raises(AdapterError, match="trained on another base model") as info:
        check_fits("builtin:aligner-smollm2-135m", {**SMOLLM2, **change}, "tiny")
    assert reason in str(info.value) and "does not fit tiny" in str(info.value)


def test_a_base_without_sizes_or_tensors_it_does_not_know_are_not_checked(tmp_path: Path) -> None:
    check_fits("builtin:aligner-smollm2-135m", {"model_type": "llama"}, "unknown sizes")  # nothing to compare
    check_fits("builtin:aligner-smollm2-135m", {**SMOLLM2, "intermediate_size": 100}, "x")  # MLP not adapted
    check_fits(write_adapter(tmp_path / "a"), {**SMOLLM2, "hidden_size": 8}, "x")  # no layer/module names
