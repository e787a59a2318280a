"""The CTranslate2 runtime's model: the source converted once to a CTranslate2 directory, then loaded.

The Hugging Face directory a source resolves to (``models.local.source``: a directory, a GGUF file or a
built-in model), with a LoRA adapter merged into it first when one is given, is converted with
``ctranslate2.converters.TransformersConverter`` to float32 weights (~15 s for the built-in model on 2
cores) under ``<cache>/ctranslate2/<name>-<key>``. The key hashes the source's files, the adapter's files
and the ctranslate2 version, so a changed model or adapter converts anew and the next start is a cache hit
(a few seconds: hashing the weights, then loading them). The conversion is written to a temporary
directory and renamed into place under a lock file, like the GGUF conversion.

The generator computes in ``float32`` (the same greedy tokens as the torch runtime) or ``int8`` (weights
quantized at load: faster, and its outputs differ from float32's).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import AutoConfig, AutoTokenizer, GenerationConfig, PreTrainedTokenizerBase

from models.local.loader import generation_limits, load_local_model
from models.local.source import (
    ModelSourceError,
    ResolvedSource,
    adapter_dir,
    cache_root,
    file_lock,
    resolve_source,
)

log = logging.getLogger(__name__)

#: Compute types the runtime accepts (``dtype``), as CTranslate2 names them.
CT2_DTYPES = ("float32", "int8")
#: Bumped when the layout of a converted directory changes.
_FORMAT = 1
_MARKER = "aligngate-ct2.json"


@dataclass(slots=True)
class Ct2Model:
    """A loaded CTranslate2 generator and what generation needs beside it."""

    generator: Any  # ctranslate2.Generator (the package ships no type information); None once released
    tokenizer: PreTrainedTokenizerBase
    source: ResolvedSource
    eos_token_ids: frozenset[int]
    pad_token_id: int
    max_positions: int
    adapter: Path | None
    #: The converted directory the generator was loaded from.
    path: Path
    dtype: str

    def release(self) -> None:
        """Free the generator and its threads now, on this thread.

        Left to the garbage collector, a generator may be destroyed on one of its own threads or during
        interpreter shutdown, which aborts the process (ctranslate2 4.x: "Resource deadlock avoided").
        """
        generator, self.generator = self.generator, None
        if generator is not None:
            generator.unload_model()
            del generator


def _ctranslate2() -> Any:
    try:
        import ctranslate2
    except ImportError as exc:
        raise ModelSourceError("runtime ctranslate2 needs `pip install 'aligngate[ctranslate2]'`") from exc
    return ctranslate2


def _files(root: Path) -> list[Path]:
    skip = {".lock"}
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix not in skip)


def conversion_key(source: Path, adapter: Path | None, version: str) -> str:
    """A digest of the source's and the adapter's files (names and bytes) and the ctranslate2 version."""
    digest = hashlib.sha256(f"aligngate-ct2/{_FORMAT}/{version}".encode())
    for label, root in (("model", source), ("adapter", adapter)):
        if root is None:
            continue
        for path in _files(root):
            digest.update(f"\0{label}/{path.relative_to(root).as_posix()}\0".encode())
            with open(path, "rb") as handle:
                digest.update(hashlib.file_digest(handle, "sha256").digest())
    return digest.hexdigest()[:16]


def ensure_ct2(source: ResolvedSource, adapter: Path | None, cache_dir: str | os.PathLike[str] | None) -> Path:
    """The CTranslate2 directory of ``source`` (+ ``adapter``), converting it now unless it is cached."""
    ct2 = _ctranslate2()
    key = conversion_key(source.path, adapter, str(ct2.__version__))
    target = cache_root(cache_dir) / "ctranslate2" / f"{source.name}-{key}"
    if (target / _MARKER).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(target.parent / f"{target.name}.lock"):
        if (target / _MARKER).is_file():  # another process converted it while we waited
            return target
        log.info("converting %s%s to CTranslate2 at %s (once)", source.path, f" + {adapter}" if adapter else "", target)
        work = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            model_dir = source.path
            if adapter is not None:  # merge the adapter with peft, then convert the merged weights
                merged = load_local_model(str(source.path), adapter=adapter, dtype="float32", device="cpu")
                model_dir = work / "merged"
                merged.model.save_pretrained(model_dir)
                merged.tokenizer.save_pretrained(model_dir)
            out = work / "ct2"
            converter = ct2.converters.TransformersConverter(str(model_dir))
            converter.convert(str(out), quantization="float32", force=True)
            (out / _MARKER).write_text(json.dumps({"source": str(source.path), "adapter": str(adapter), "key": key}))
            if target.exists():
                shutil.rmtree(target)
            os.rename(out, target)
        except ModelSourceError:
            raise
        except Exception as exc:
            raise ModelSourceError(f"cannot convert {source.path} to CTranslate2: {exc}") from exc
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return target


def load_ct2_model(
    model: str,
    *,
    adapter: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    dtype: str = "float32",
    threads: int = 1,
) -> Ct2Model:
    """Resolve ``model``, convert it (and ``adapter``) once, and load a CTranslate2 generator on CPU."""
    if dtype not in CT2_DTYPES:
        raise ModelSourceError(f"runtime ctranslate2 takes dtype {' or '.join(CT2_DTYPES)}, not {dtype!r}")
    ct2 = _ctranslate2()
    adapter_path = adapter_dir(adapter)
    source = resolve_source(model, cache_dir)
    path = ensure_ct2(source, adapter_path, cache_dir)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(source.path))
        config = AutoConfig.from_pretrained(str(source.path))
    except (OSError, ValueError) as exc:
        raise ModelSourceError(f"cannot load {source.path}: {exc}") from exc
    try:
        generation: object = GenerationConfig.from_pretrained(str(source.path))
    except OSError:  # no generation_config.json
        generation = None
    eos, pad, max_positions = generation_limits(config, generation, tokenizer, str(source.path))
    try:
        generator = ct2.Generator(str(path), device="cpu", compute_type=dtype, intra_threads=threads, inter_threads=1)
    except (RuntimeError, ValueError) as exc:
        raise ModelSourceError(f"cannot load the CTranslate2 model {path}: {exc}") from exc
    return Ct2Model(
        generator=generator,
        tokenizer=tokenizer,
        source=source,
        eos_token_ids=eos,
        pad_token_id=pad,
        max_positions=max_positions,
        adapter=adapter_path,
        path=path,
        dtype=dtype,
    )
