"""``EVAL.yaml``: what to evaluate, against what, judged by whom (dataclasses loaded with ``core.recipe``).

Top-level keys: ``prompts``, ``target``, ``arms``, ``baseline``, ``judges``, ``generation``, ``concurrency``
(the README's "Evaluating arms" section has the table). :func:`load_eval_config` reads the YAML, applies
``key=value`` overrides (dotted keys reach into sections: ``generation.max_tokens=64``), rejects unknown keys
(``core.recipe``), then :func:`check` rejects what the types cannot: a prompt set naming no source or two, an
unknown arm, criterion or bundled set, a target of no kind or of two kinds, a judge of no kind or two. Every
problem is an :class:`EvalConfigError` whose message is one line a user can act on.

The target kind follows from the keys given: ``url`` → a running gateway; ``candidate`` + ``baseline`` → two
sides, each a model or one arm of a gateway config (kind ``models``); otherwise an in-process gateway
(``gateway_config``, or the embedded default when it is unset or empty). With two sides the arms are always
``candidate`` against ``baseline`` (``arms``/``baseline`` are not used).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from gateway.config import ARMS
from gateway.eval.records import CRITERIA
from models.adapters import AdapterError, check_adapter

__all__ = [
    "BUNDLED_SETS",
    "BlindJudgeSpec",
    "EvalConfig",
    "EvalConfigError",
    "GenerationSpec",
    "JudgeSpec",
    "LLMJudgeSpec",
    "LocalSpec",
    "ModelSpec",
    "PromptSetSpec",
    "TargetKind",
    "TargetSpec",
    "check",
    "judge_name",
    "load_eval_config",
    "target_kind",
]

logger = logging.getLogger(__name__)

#: The bundled prompt sets (``gateway/eval/prompts/NAME/prompts.jsonl``) and the criterion each is judged by.
BUNDLED_SETS: dict[str, str] = {"dolly-eval": "helpful", "hh-rlhf-harmless": "harmless"}
#: The arms of a two-sided target.
MODEL_ARMS = ("candidate", "baseline")

TargetKind = Literal["url", "in_process", "models"]


class EvalConfigError(ValueError):
    """The eval config cannot be used; the message says why, in one line."""


@dataclass
class PromptSetSpec:
    """One prompt set: ``bundled: NAME`` or ``path: FILE.jsonl`` (rows with ``prompt`` or ``messages``)."""

    bundled: str | None = None
    path: str | None = None
    #: Its label in the report (default: the bundled name, or the file's stem).
    name: str | None = None
    #: ``helpful`` or ``harmless`` (default: the bundled set's own; ``helpful`` for a file).
    criterion: str | None = None
    #: Keep at most this many prompts, a sample drawn with ``seed`` (in file order).
    limit: int | None = None
    seed: int = 0
    #: Instead of the sample, the prompts it leaves out (with ``limit`` and ``seed``): a development set that never
    #: meets the reported one.
    rest: bool = False


@dataclass
class LocalSpec:
    """An in-process model: an HF directory, a ``.gguf`` file or ``builtin:NAME``, and an optional adapter."""

    model: str = ""
    adapter: str | None = None


@dataclass
class ModelSpec:
    """One side of a two-sided target: an OpenAI-compatible endpoint (``url`` + ``model``), ``local``, or one arm
    of an in-process gateway (``gateway_config`` + ``arm``; ``model`` then picks its backend)."""

    url: str | None = None
    model: str | None = None
    api_key_env: str | None = None
    local: LocalSpec | None = None
    #: An in-process gateway's config file ("" : the embedded default) ...
    gateway_config: str | None = None
    #: ... and the arm it answers on.
    arm: str = "control"


@dataclass
class TargetSpec:
    #: A running gateway (``http://host:8000/v1``; ``/v1`` is added when missing).
    url: str | None = None
    #: Environment variable holding the gateway's API key (sent as ``Authorization: Bearer``).
    api_key_env: str | None = None
    #: The model to ask for (default: the first the gateway lists in ``/v1/models``).
    model: str | None = None
    #: In-process gateway: its config file; unset or empty: the embedded default.
    gateway_config: str | None = None
    #: Two models: the one under test and the one it is compared with.
    candidate: ModelSpec | None = None
    baseline: ModelSpec | None = None
    #: Longest wait for one answer, seconds.
    timeout_s: float = 600.0


@dataclass
class LLMJudgeSpec:
    url: str = ""
    model: str = ""
    api_key_env: str | None = None
    #: Judge every set by this criterion instead of the set's own.
    criterion: str | None = None
    max_tokens: int = 1024
    timeout_s: float = 120.0


@dataclass
class BlindJudgeSpec:
    #: Written each run: the pairs still waiting for a verdict, sides hidden (JSONL).
    pairs: str = ""
    #: Read each run: the readers' verdicts (JSONL ``{"pair", "verdict": "A" | "B" | "tie", "why"?}``).
    verdicts: str = ""


@dataclass
class JudgeSpec:
    """One judge: ``reward_model: DIR`` (what ``aligngate train rm`` writes), ``llm: {url, model, ...}`` or
    ``blind: {pairs, verdicts}`` (readers outside aligngate)."""

    #: Its label in the report (default: ``rm:<folder>`` or ``llm:<model>``).
    name: str | None = None
    reward_model: str | None = None
    #: Reward model: a score difference at most this large is a tie.
    tie_margin: float = 0.0
    #: Reward model: longest (prompt + answer) in tokens; longer ones are cut from the left of the answer's end.
    max_length: int = 1024
    batch_size: int = 8
    #: Reward model: ``auto`` (CUDA when there is one), ``cpu`` or ``cuda``.
    device: str = "auto"
    llm: LLMJudgeSpec | None = None
    blind: BlindJudgeSpec | None = None


@dataclass
class GenerationSpec:
    temperature: float = 0.0
    max_tokens: int = 256
    #: Sent as the request's ``seed`` (null: not sent).
    seed: int | None = 0


def _default_prompts() -> list[PromptSetSpec]:
    return [PromptSetSpec(bundled="dolly-eval")]


@dataclass
class EvalConfig:
    prompts: list[PromptSetSpec] = field(default_factory=_default_prompts)
    target: TargetSpec = field(default_factory=TargetSpec)
    arms: list[str] = field(default_factory=lambda: list(ARMS))
    baseline: str = "control"
    judges: list[JudgeSpec] = field(default_factory=list)
    generation: GenerationSpec = field(default_factory=GenerationSpec)
    #: Requests in flight at once (answers, and LLM-judge calls).
    concurrency: int = 4


def target_kind(target: TargetSpec) -> TargetKind:
    """What ``target`` names (assumes :func:`check` passed)."""
    if target.url is not None:
        return "url"
    if target.candidate is not None or target.baseline is not None:
        return "models"
    return "in_process"


def judge_name(spec: JudgeSpec) -> str:
    if spec.name:
        return spec.name
    if spec.reward_model is not None:
        return f"rm:{Path(spec.reward_model.rstrip('/')).name or spec.reward_model}"
    if spec.blind is not None:
        return f"blind:{Path(spec.blind.verdicts).stem}"
    assert spec.llm is not None
    return f"llm:{spec.llm.model}"


def _check_url(url: str, where: str) -> None:
    if not url.lower().startswith(("http://", "https://")):
        raise EvalConfigError(f"{where} must start with http:// or https://, not {url!r}")


def _check_model(spec: ModelSpec | None, where: str) -> None:
    if spec is None:
        raise EvalConfigError(
            f"a two-sided target needs both target.candidate and target.baseline ({where} is missing)"
        )
    if [spec.url is not None, spec.local is not None, spec.gateway_config is not None].count(True) != 1:
        raise EvalConfigError(
            f"{where}: give one of `url` (+ `model`), `local: {{model, adapter}}` or `gateway_config` (+ `arm`)"
        )
    if spec.gateway_config is None and spec.arm != "control":
        raise EvalConfigError(f"{where}.arm is for a `gateway_config` side; a model alone has no arms")
    if spec.gateway_config is not None:
        if spec.arm not in ARMS:
            raise EvalConfigError(f"{where}.arm: unknown arm {spec.arm!r}; arms are {', '.join(ARMS)}")
    elif spec.url is not None:
        _check_url(spec.url, f"{where}.url")
        if not spec.model:
            raise EvalConfigError(f"{where}: `url` also needs `model` (the name the server serves it under)")
    elif spec.local is not None and not spec.local.model:
        raise EvalConfigError(f"{where}.local.model is required (an HF directory, a .gguf file or builtin:NAME)")
    elif spec.local is not None and spec.local.adapter is not None:
        try:
            check_adapter(spec.local.adapter)
        except AdapterError as exc:
            raise EvalConfigError(f"{where}.local.adapter: {exc}") from None


def check(config: EvalConfig) -> EvalConfig:
    """Reject what the types let through (see the module docstring); returns ``config``."""
    if not config.prompts:
        raise EvalConfigError("prompts: give at least one prompt set")
    labels: list[str] = []
    for i, ps in enumerate(config.prompts):
        where = f"prompts[{i}]"
        if (ps.bundled is None) == (ps.path is None):
            raise EvalConfigError(f"{where}: give either `bundled: NAME` or `path: FILE.jsonl`")
        if ps.bundled is not None and ps.bundled not in BUNDLED_SETS:
            raise EvalConfigError(f"{where}: unknown bundled set {ps.bundled!r}; known: {', '.join(BUNDLED_SETS)}")
        if ps.criterion is not None and ps.criterion not in CRITERIA:
            raise EvalConfigError(f"{where}.criterion must be one of {', '.join(CRITERIA)}, not {ps.criterion!r}")
        if ps.limit is not None and ps.limit < 1:
            raise EvalConfigError(f"{where}.limit must be at least 1, not {ps.limit}")
        if ps.rest and ps.limit is None:
            raise EvalConfigError(f"{where}.rest needs `limit` (and `seed`): the prompts that sample leaves out")
        labels.append(ps.name or ps.bundled or Path(ps.path or "").stem)
    dupes = sorted({n for n in labels if labels.count(n) > 1})
    if dupes:
        raise EvalConfigError(f"prompts: two sets share the name {dupes[0]!r}; give one a `name`")

    t = config.target
    kinds = [t.url is not None, t.candidate is not None or t.baseline is not None, bool(t.gateway_config)]
    if sum(kinds) > 1:
        raise EvalConfigError(
            "target: give one of `url` (a running gateway), `gateway_config` (in-process) or "
            "`candidate` + `baseline` (two sides), not several"
        )
    if t.url is not None:
        _check_url(t.url, "target.url")
    if kinds[1]:
        _check_model(t.candidate, "target.candidate")
        _check_model(t.baseline, "target.baseline")
    if t.timeout_s <= 0:
        raise EvalConfigError("target.timeout_s must be positive")

    if target_kind(t) != "models":
        if not config.arms:
            raise EvalConfigError("arms: give at least one arm")
        for arm in [*config.arms, config.baseline]:
            if arm not in ARMS:
                raise EvalConfigError(f"unknown arm {arm!r}; arms are {', '.join(ARMS)}")
        if len(set(config.arms)) != len(config.arms):
            raise EvalConfigError("arms: an arm is listed twice")
        if not [a for a in config.arms if a != config.baseline]:
            raise EvalConfigError(f"arms: nothing to compare with the baseline {config.baseline!r}")

    names: list[str] = []
    for i, js in enumerate(config.judges):
        where = f"judges[{i}]"
        if sum(kind is not None for kind in (js.reward_model, js.llm, js.blind)) != 1:
            raise EvalConfigError(
                f"{where}: give one of `reward_model: DIR`, `llm: {{url, model}}` or `blind: {{pairs, verdicts}}`"
            )
        if js.blind is not None:
            if not js.blind.pairs or not js.blind.verdicts:
                raise EvalConfigError(f"{where}.blind needs `pairs` (written) and `verdicts` (read) files")
            if Path(js.blind.pairs).expanduser().resolve() == Path(js.blind.verdicts).expanduser().resolve():
                raise EvalConfigError(f"{where}.blind: `pairs` and `verdicts` must be different files")
        if js.llm is not None:
            if not js.llm.url or not js.llm.model:
                raise EvalConfigError(f"{where}.llm needs `url` and `model`")
            _check_url(js.llm.url, f"{where}.llm.url")
            if js.llm.criterion is not None and js.llm.criterion not in CRITERIA:
                raise EvalConfigError(f"{where}.llm.criterion must be one of {', '.join(CRITERIA)}")
            if js.llm.max_tokens < 1 or js.llm.timeout_s <= 0:
                raise EvalConfigError(f"{where}.llm: max_tokens and timeout_s must be positive")
        if js.tie_margin < 0 or js.max_length < 8 or js.batch_size < 1:
            raise EvalConfigError(f"{where}: tie_margin must be >= 0, max_length >= 8, batch_size >= 1")
        if js.device not in ("auto", "cpu", "cuda"):
            raise EvalConfigError(f"{where}.device must be auto, cpu or cuda, not {js.device!r}")
        names.append(judge_name(js))
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise EvalConfigError(f"judges: two judges share the name {dupes[0]!r}; give one a `name`")

    g = config.generation
    if g.max_tokens < 1 or g.temperature < 0:
        raise EvalConfigError("generation: max_tokens must be at least 1 and temperature at least 0")
    if config.concurrency < 1:
        raise EvalConfigError("concurrency must be at least 1")
    return config


def load_eval_config(path: str | Path | None, overrides: Sequence[str] = ()) -> EvalConfig:
    """The config of ``path`` (None: the defaults) with ``key=value`` overrides, checked.

    Raises :class:`EvalConfigError` (one line) for every problem, the loader's own included.
    """
    from core.recipe import RecipeError, load_recipe

    try:
        config = load_recipe(EvalConfig, path, overrides)
    except RecipeError as exc:
        message = " ".join(str(exc).split()).replace("recipe key", "config key").replace("recipe ", "config ")
        raise EvalConfigError(message) from None
    except TypeError as exc:  # a dataclass built with a wrong argument: still the user's config
        raise EvalConfigError(f"invalid eval config: {exc}") from None
    return check(config)
