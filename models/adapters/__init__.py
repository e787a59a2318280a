"""LoRA adapters for local models: the ones shipped with aligngate (``builtin:NAME``) and the checks an adapter
directory must pass before a server starts on it.

Each shipped adapter is a peft directory of package data under ``models/adapters/NAME/``
(``adapter_config.json``, ``adapter_model.safetensors`` and a model card ``README.md`` saying what it was trained
on, how, and what it measured). :func:`resolve_adapter` turns ``builtin:NAME`` or a path into a directory;
:func:`check_adapter` reads the directory's config and the safetensors header (no torch) and raises
:class:`AdapterError` for a missing, unreadable or truncated adapter, so a bad ``adapter:`` is a configuration
error at start, not a traceback inside a worker.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

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


def _check_safetensors(file: Path, label: str) -> None:
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
