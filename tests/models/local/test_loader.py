"""models/local/loader.py: where a model runs and in what precision (``device``, ``dtype``), resolved before loading.

No GPU is at hand in CI: these check the choice (``auto`` follows what torch sees) and that asking for a GPU that is
not there fails with a clear error before anything is loaded. The engine's own tests run it on the CPU.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from models.local import LocalEngine
from models.local.loader import load_local_model, resolve_device, resolve_dtype
from models.local.source import ModelSourceError


def test_auto_is_the_gpu_when_torch_sees_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cpu") == torch.device("cpu")


def test_cuda_without_a_gpu_is_refused_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ModelSourceError, match="device cuda: torch sees no CUDA GPU"):
        resolve_device("cuda")
    with pytest.raises(ModelSourceError, match="device must be one of auto, cpu, cuda"):
        resolve_device("tpu")


def test_auto_precision_is_float32_on_the_cpu_and_bfloat16_on_a_gpu() -> None:
    assert resolve_dtype("auto", torch.device("cpu")) is torch.float32
    assert resolve_dtype("auto", torch.device("cuda")) is torch.bfloat16
    assert resolve_dtype("float16", torch.device("cpu")) is torch.float16
    assert resolve_dtype("float32", torch.device("cuda")) is torch.float32
    with pytest.raises(ModelSourceError, match="dtype must be one of"):
        resolve_dtype("int8", torch.device("cpu"))


def test_loading_onto_a_missing_gpu_fails_before_reading_the_model(
    tiny_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ModelSourceError, match="device cuda"):
        load_local_model(str(tiny_dir), device="cuda")
    loaded = load_local_model(str(tiny_dir))  # auto: the CPU here, in float32
    parameter = next(loaded.model.parameters())
    assert (parameter.device.type, parameter.dtype) == ("cpu", torch.float32)


def test_the_ctranslate2_runtime_stays_on_the_cpu() -> None:
    with pytest.raises(ValueError, match="runtime ctranslate2 runs on the CPU"):
        LocalEngine("builtin:smollm2-135m-instruct", runtime="ctranslate2", device="cuda")
