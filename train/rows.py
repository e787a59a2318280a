"""Training rows from a recipe's :class:`~train.config.DatasetSpec`.

:func:`dataset_path` resolves the file (``bundled:REL`` under ``train/datasets/``; no path: the bundled default
for the kind); :mod:`train.data` loads it; the builders turn it into what a method trains on: preference pairs
(:func:`preference_rows`: RM, DPO), labelled unpaired rows (:func:`unpaired_rows`: KTO), prompt-completion rows
(:func:`sft_rows`: SFT, and PPO's prompts; :func:`sft_splits`: SFT's train and held-out sides). Each applies
``max_rows``; :func:`to_datasets` / :func:`datasets_of` make ``datasets.Dataset`` train and eval sets. A kind
that cannot give the rows asked for raises :class:`core.recipe.RecipeError`. ``datasets`` is imported only inside
:func:`datasets_of`.
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
    return _cap(_build_sft(kind, rows, spec), spec)


def sft_splits(config: TrainConfig, default: Path = bundled.HH_RLHF_HARMLESS) -> tuple[list[Any], list[Any]]:
    """SFT rows as ``(train, held out)``.

    Rows built from preference pairs (aligner and chat tasks on hh-rlhf / preferences / bpo data) are split as
    *pairs*, keyed by their conversation, before they are built: with the same ``eval_share`` and ``seed`` the
    held-out side is exactly the RM / DPO / KTO recipes' (so the prompts ``aligngate eval`` holds out are never
    trained on), and an Aligner correction stays on one side with its identity copy. Other rows are split by
    their prompt after building. ``max_rows`` caps the training side of a pair split.
    """
    spec = config.dataset
    kind, rows = _load_rows(spec, default)
    if _sft_task(kind, spec) in ("aligner", "chat") and kind in ("hh-rlhf", "preferences", "bpo"):
        prefs = list(preferences_from_bpo(rows)) if kind == "bpo" else rows
        train, held_out = train_eval_split(prefs, config.eval_share, seed=config.seed)
        kind = "preferences" if kind == "bpo" else kind
        return _cap(_build_sft(kind, train, spec), spec), _build_sft(kind, held_out, spec)
    return train_eval_split(_cap(_build_sft(kind, rows, spec), spec), config.eval_share, seed=config.seed)


def _sft_task(kind: str, spec: DatasetSpec) -> str:
    if spec.task == "auto":
        return {"bpo": "rewriter", "rewriter": "rewriter", "aligner": "aligner"}.get(kind, "chat")
    return spec.task


def _build_sft(kind: str, rows: list[Any], spec: DatasetSpec) -> list[Any]:
    task = _sft_task(kind, spec)
    if task == "rewriter":
        if kind == "bpo":
            rows = list(rewriter_pairs(rows))
        elif kind != "rewriter":
            raise RecipeError(f"rewriter SFT needs bpo or rewriter data, got {kind!r}")
        return list(rewriter_sft(rows, spec.template or "bpo"))
    if task == "aligner":
        if kind in ("hh-rlhf", "preferences"):
            rows = list(aligner_triplets(rows))
        elif kind == "bpo":
            rows = list(aligner_triplets(preferences_from_bpo(rows)))
        elif kind != "aligner":
            raise RecipeError(f"aligner SFT needs aligner or preference data, got {kind!r}")
        return list(aligner_sft(rows, spec.template or "aligner-v1"))
    if task == "chat":
        if kind in ("hh-rlhf", "preferences"):
            return list(sft_from_preferences(rows))
        if kind == "bpo":
            return list(sft_from_preferences(preferences_from_bpo(rows)))
        if kind == "dolly":
            return list(sft_from_dolly(rows))
        if kind in ("prompt-completion", "messages"):
            return rows
        raise RecipeError(f"chat SFT cannot use {kind!r} data")
    raise RecipeError(f"dataset.task must be auto, rewriter, aligner or chat, got {spec.task!r}")


def _cap(rows: list[Any], spec: DatasetSpec) -> list[Any]:
    return rows[: spec.max_rows] if spec.max_rows is not None else rows


def to_datasets(rows: list[Any], config: TrainConfig) -> tuple[Any, Any | None]:
    """``datasets.Dataset`` train and eval of rows split by their prompt (see :func:`datasets_of`)."""
    return datasets_of(*train_eval_split(rows, config.eval_share, seed=config.seed))


def datasets_of(train: list[Any], held_out: list[Any]) -> tuple[Any, Any | None]:
    """``datasets.Dataset`` train and eval (None when the eval side is empty)."""
    from datasets import Dataset

    if not train:
        raise RecipeError("no training rows left after the eval split")
    log.info("rows: %d train, %d eval", len(train), len(held_out))
    return Dataset.from_list(train), (Dataset.from_list(held_out) if held_out else None)
