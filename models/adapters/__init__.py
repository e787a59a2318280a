"""LoRA adapters for local models: the ones shipped with aligngate (``builtin:NAME``) and the checks an adapter
directory must pass before a server starts on it.

Each shipped adapter is a peft directory of package data under ``models/adapters/NAME/``
(``adapter_config.json``, ``adapter_model.safetensors`` and a model card ``README.md`` saying what it was trained
on, how, and what it measured). :func:`resolve_adapter` turns ``builtin:NAME`` or a path into a directory;
:func:`check_adapter` reads the directory's config and the safetensors header (no torch) and raises
:class:`AdapterError` for a missing, unreadable or truncated adapter; :func:`check_fits` compares the LoRA
tensors' shapes with the base model's ``config.json`` and raises it for an adapter trained on another base. So a
bad ``adapter:`` is a configuration error at start, not a traceback inside a worker.
"""

from __future__ import annotations

import json
import os
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: How a built-in model or a shipped adapter is named in configs (``builtin:NAME``).
BUILTIN_PREFIX = "builtin:"
ADAPTERS_DIR = Path(__file__).resolve().parent
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"


class AdapterError(ValueError):
    """An adapter that cannot be used: unknown name, missing directory or files, unreadable or truncated."""


@dataclass(frozen=True, slots=True)
class BuiltinAdapter:
    """A LoRA adapter shipped as package data, for one base model and one helper role."""

    name: str
    base: str
    helper: str
    template: str

    @property
    def path(self) -> Path:
        return ADAPTERS_DIR / self.name


#: The adapters aligngate ships, by the name after ``builtin:``.
BUILTIN_ADAPTERS: dict[str, BuiltinAdapter] = {
    a.name: a
    for a in (
        BuiltinAdapter("aligner-smollm2-135m", "builtin:smollm2-135m-instruct", "aligner", "aligner-chat"),
        BuiltinAdapter("rewriter-smollm2-135m", "builtin:smollm2-135m-instruct", "rewriter", "bpo-chat"),
    )
}


def resolve_adapter(adapter: str | os.PathLike[str]) -> Path:
    """The directory of ``adapter``: a shipped ``builtin:NAME`` or a path (``~`` expanded); not checked."""
    text = os.fspath(adapter)
    if text.startswith(BUILTIN_PREFIX):
        found = BUILTIN_ADAPTERS.get(text[len(BUILTIN_PREFIX) :])
        if found is None:
            known = ", ".join(BUILTIN_PREFIX + name for name in sorted(BUILTIN_ADAPTERS))
            raise AdapterError(f"unknown built-in adapter {text!r}; known: {known}")
        return found.path
    return Path(text).expanduser()


def check_adapter(adapter: str | os.PathLike[str]) -> Path:
    """Resolve ``adapter`` and check it is a readable peft LoRA directory; returns its path.

    Checks: the directory exists; ``adapter_config.json`` is a JSON object naming a ``peft_type``;
    ``adapter_model.safetensors`` has a valid header whose tensors end where the file does (a truncated or
    overwritten file fails here, before any model is loaded).
    """
    path = resolve_adapter(adapter)
    label = os.fspath(adapter)
    if not path.is_dir():
        raise AdapterError(f"adapter {label!r}: no such directory")
    try:
        config = json.loads((path / CONFIG_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AdapterError(f"adapter {label!r} is not a peft adapter directory (no {CONFIG_FILE})") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AdapterError(f"adapter {label!r}: unreadable {CONFIG_FILE} ({exc})") from None
    if not isinstance(config, dict) or not isinstance(config.get("peft_type"), str):
        raise AdapterError(f"adapter {label!r}: {CONFIG_FILE} names no peft_type")
    _check_safetensors(path / WEIGHTS_FILE, label)
    return path


#: ``...layers.<i>.<block>.<module>.lora_A.weight`` (peft's names for a decoder's LoRA tensors).
_LORA_TENSOR = re.compile(r"\.layers\.(\d+)\.(?:self_attn|mlp)\.(\w+)\.lora_([AB])(?:\.\w+)?\.weight$")


def check_fits(adapter: str | os.PathLike[str], config: Mapping[str, Any], base_label: str) -> None:
    """Raise :class:`AdapterError` unless every LoRA tensor of ``adapter`` (checked with :func:`check_adapter`)
    fits the decoder whose sizes ``config`` gives (a Hugging Face ``config.json``'s keys): its layer exists and its
    input (``lora_A``) and output (``lora_B``) sizes are those of the module it adapts. Tensors of modules this does
    not know (embeddings, a score head) are not checked; neither is anything when the config lacks the sizes."""
    path = resolve_adapter(adapter)
    label = os.fspath(adapter)
    try:
        hidden, inter = int(config["hidden_size"]), int(config["intermediate_size"])
        layers, heads = int(config["num_hidden_layers"]), int(config["num_attention_heads"])
        kv_heads = int(config.get("num_key_value_heads") or heads)
        head_dim = int(config.get("head_dim") or hidden // heads)
    except (ValueError, KeyError, TypeError, ZeroDivisionError):
        return
    q, kv = heads * head_dim, kv_heads * head_dim
    sizes = {"q_proj": (hidden, q), "k_proj": (hidden, kv), "v_proj": (hidden, kv), "o_proj": (q, hidden),
             "gate_proj": (hidden, inter), "up_proj": (hidden, inter), "down_proj": (inter, hidden)}
    for name, entry in _check_safetensors(path / WEIGHTS_FILE, label).items():
        found = _LORA_TENSOR.search(name)
        if found is None or found.group(2) not in sizes or not isinstance(entry, dict):
            continue
        layer, module, side = int(found.group(1)), found.group(2), found.group(3)
        shape = entry.get("shape")
        if layer >= layers:
            raise AdapterError(f"adapter {label!r} does not fit {base_label}: it adapts layer {layer}, the base has "
                               f"{layers} (an adapter trained on another base model)")
        if not (isinstance(shape, list) and len(shape) == 2):
            raise AdapterError(f"adapter {label!r}: {WEIGHTS_FILE} has a corrupt header ({name}: shape {shape})")
        fan_in, fan_out = sizes[module]
        want, got = (fan_in, shape[1]) if side == "A" else (fan_out, shape[0])
        if got != want:
            raise AdapterError(f"adapter {label!r} does not fit {base_label}: {name} has shape {shape}, the base's "
                               f"{module} takes {want} (an adapter trained on another base model)")


def _check_safetensors(file: Path, label: str) -> dict[str, object]:
    """The safetensors layout: 8-byte little-endian header size, a JSON header, then the tensors' bytes."""
    try:
        size = file.stat().st_size
        with file.open("rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise AdapterError(f"adapter {label!r}: {WEIGHTS_FILE} is truncated")
            (header_len,) = struct.unpack("<Q", head)
            if header_len > min(size - 8, 100 << 20):
                raise AdapterError(f"adapter {label!r}: {WEIGHTS_FILE} has a corrupt header")
            header = json.loads(fh.read(header_len).decode("utf-8"))
    except FileNotFoundError:
        raise AdapterError(f"adapter {label!r} has no {WEIGHTS_FILE}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AdapterError(f"adapter {label!r}: unreadable {WEIGHTS_FILE} ({exc})") from None
    if not isinstance(header, dict):
        raise AdapterError(f"adapter {label!r}: {WEIGHTS_FILE} has a corrupt header")
    end = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
            raise AdapterError(f"adapter {label!r}: {WEIGHTS_FILE} has a corrupt header")
        end = max(end, offsets[1])
    if end == 0:
        raise AdapterError(f"adapter {label!r}: {WEIGHTS_FILE} holds no tensors")
    if 8 + header_len + end != size:
        raise AdapterError(f"adapter {label!r}: {WEIGHTS_FILE} is truncated or corrupt ({size} bytes, expected "
                           f"{8 + header_len + end})")
    return header
