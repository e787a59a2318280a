"""Training rows from a recipe's :class:`~train.config.DatasetSpec`.

:func:`dataset_path` resolves the file (``bundled:REL`` under ``train/datasets/``; no path: the bundled default
for the kind); :mod:`train.data` loads it; the builders turn it into what a method trains on: preference pairs
(:func:`preference_rows`: RM, DPO), labelled unpaired rows (:func:`unpaired_rows`: KTO), prompt-completion rows
(:func:`sft_rows`: SFT, and PPO's prompts). Each applies ``max_rows``; :func:`to_datasets` splits rows into
``datasets.Dataset`` train and eval sets. A kind that cannot give the rows asked for raises
:class:`core.recipe.RecipeError`. ``datasets`` is imported only inside :func:`to_datasets`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from core.recipe import RecipeError
from train.config import DatasetSpec, TrainConfig
from train.data import bundled
from train.data.builders import (
    aligner_sft,
    aligner_triplets,
    preference_to_kto,
    preferences_from_bpo,
    rewriter_pairs,
    rewriter_sft,
    sft_from_dolly,
    sft_from_preferences,
    train_eval_split,
)
from train.data.loaders import load_any

log = logging.getLogger(__name__)


BUNDLED_PREFIX = "bundled:"


def dataset_path(spec: DatasetSpec, default: Path) -> Path:
    """The file ``spec`` names: ``bundled:REL`` is under ``train/datasets/``; no path → the default for its kind."""
    if spec.path:
        if spec.path.startswith(BUNDLED_PREFIX):
            return bundled.DATASETS_DIR / spec.path[len(BUNDLED_PREFIX) :]
        return Path(spec.path).expanduser()
    if spec.task == "rewriter":
        return bundled.BPO_TEST
    by_kind = {"bpo": bundled.BPO_TEST, "dolly": bundled.DOLLY_EVAL, "preferences": bundled.ALPACA_EVAL_PREFS}
    return by_kind.get(spec.kind or "", default)


def _load_rows(spec: DatasetSpec, default: Path) -> tuple[str, list[Any]]:
    path = dataset_path(spec, default)
    loaded = load_any(path, spec.kind)
    log.info("loaded %s", loaded.summary())
    return loaded.kind, list(loaded.rows)


def preference_rows(spec: DatasetSpec, default: Path = bundled.HH_RLHF_HARMLESS) -> list[Any]:
    """Conversational preference rows (RM, DPO) from hh-rlhf / preferences / bpo files."""
    kind, rows = _load_rows(spec, default)
    if kind == "bpo":
        rows = list(preferences_from_bpo(rows))
    elif kind not in ("hh-rlhf", "preferences"):
        raise RecipeError(f"dataset kind {kind!r} has no preference pairs (need hh-rlhf, preferences or bpo)")
    return _cap(rows, spec)


def unpaired_rows(spec: DatasetSpec, default: Path = bundled.HH_RLHF_HARMLESS) -> list[Any]:
    """KTO rows ``{prompt, completion, label}``: an unpaired file as is, or preference pairs split in two."""
    kind, rows = _load_rows(spec, default)
    if kind == "unpaired":
        return _cap(rows, spec)
    if kind == "bpo":
        rows = list(preferences_from_bpo(rows))
    elif kind not in ("hh-rlhf", "preferences"):
        raise RecipeError(f"dataset kind {kind!r} cannot give KTO rows (need unpaired or preference data)")
    return _cap(list(preference_to_kto(rows)), spec)


def sft_rows(spec: DatasetSpec, default: Path = bundled.HH_RLHF_HARMLESS) -> list[Any]:
    """Prompt-completion rows for SFT; ``spec.task`` picks rewriter / aligner / chat (base model) building."""
    kind, rows = _load_rows(spec, default)
    task = spec.task
    if task == "auto":
        task = {"bpo": "rewriter", "rewriter": "rewriter", "aligner": "aligner"}.get(kind, "chat")
    if task == "rewriter":
        if kind == "bpo":
            rows = list(rewriter_pairs(rows))
        elif kind != "rewriter":
            raise RecipeError(f"rewriter SFT needs bpo or rewriter data, got {kind!r}")
        out: list[Any] = list(rewriter_sft(rows, spec.template or "bpo"))
    elif task == "aligner":
        if kind in ("hh-rlhf", "preferences"):
            rows = list(aligner_triplets(rows))
        elif kind == "bpo":
            rows = list(aligner_triplets(preferences_from_bpo(rows)))
        elif kind != "aligner":
            raise RecipeError(f"aligner SFT needs aligner or preference data, got {kind!r}")
        out = list(aligner_sft(rows, spec.template or "aligner-v1"))
    elif task == "chat":
        if kind in ("hh-rlhf", "preferences"):
            out = list(sft_from_preferences(rows))
        elif kind == "bpo":
            out = list(sft_from_preferences(preferences_from_bpo(rows)))
        elif kind == "dolly":
            out = list(sft_from_dolly(rows))
        elif kind in ("prompt-completion", "messages"):
            out = rows
        else:
            raise RecipeError(f"chat SFT cannot use {kind!r} data")
    else:
        raise RecipeError(f"dataset.task must be auto, rewriter, aligner or chat, got {spec.task!r}")
    return _cap(out, spec)


def _cap(rows: list[Any], spec: DatasetSpec) -> list[Any]:
    return rows[: spec.max_rows] if spec.max_rows is not None else rows


def to_datasets(rows: list[Any], config: TrainConfig) -> tuple[Any, Any | None]:
    """``datasets.Dataset`` train and eval (None when ``eval_share`` is 0 or the eval side is empty)."""
    from datasets import Dataset

    train, held_out = train_eval_split(rows, config.eval_share, seed=config.seed)
    if not train:
        raise RecipeError("no training rows left after the eval split")
    log.info("rows: %d train, %d eval", len(train), len(held_out))
    return Dataset.from_list(train), (Dataset.from_list(held_out) if held_out else None)
