"""The reward-model judge: what ``aligngate train rm`` writes (or any one-output sequence classifier).

Each (prompt, answer) is scored as a finished assistant turn — the reward model's chat template over the
prompt's messages and the answer, end-of-turn included (:mod:`models.reward`, the code the trainers score
with) — cut at ``max_length`` tokens, ``batch_size`` per forward pass. The candidate wins when its score beats
the baseline's by more than ``tie_margin``, loses when it trails by more, and ties otherwise. Each distinct
(prompt, answer) is scored once per run (the baseline's answer meets every arm).

The cache identity of a verdict holds the model's files, ``tie_margin``, ``max_length`` and the precision
(``cuda-bf16`` or ``cpu-fp32``). Building the judge checks that the model's path exists; loading is deferred to
the first pairs (a run whose judgements are all cached never loads it); a model that does not load is a
:class:`~gateway.eval.judges.JudgeError`. torch runs in a worker thread so the event loop stays free. Needs
the ``local`` extra (torch, transformers, peft). ``device``: ``auto`` is CUDA when there is one (bf16), else the
CPU (fp32).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from gateway.eval.config import JudgeSpec
from gateway.eval.judges import JudgeError, PairItem
from gateway.eval.records import Judgement, Outcome, digest
from gateway.eval.targets import fingerprint

__all__ = ["RMJudge"]

logger = logging.getLogger(__name__)


def _precision(device: str) -> str:
    """Where and how the scores are computed: ``cuda-bf16`` or ``cpu-fp32`` (``auto`` resolved as
    :func:`models.reward.load_on_device` resolves it)."""
    if device == "cuda":
        return "cuda-bf16"
    if device == "auto":
        try:
            import torch
        except ImportError:
            return "cpu-fp32"
        if torch.cuda.is_available():
            return "cuda-bf16"
    return "cpu-fp32"


class RMJudge:
    def __init__(self, name: str, spec: JudgeSpec) -> None:
        assert spec.reward_model is not None
        self.name = name
        self.spec = spec
        self.path = spec.reward_model
        adapter = Path(self.path) / "adapter_config.json"
        self.identity = digest(
            {
                "kind": "reward_model",
                "path": fingerprint(self.path),
                "adapter_model": fingerprint(str(adapter.parent / "adapter_model.safetensors")),
                "tie_margin": spec.tie_margin,
                "max_length": spec.max_length,
                # bf16 on a GPU and fp32 on the CPU score the same pair a little differently: not one cache entry
                "precision": _precision(spec.device),
            }
        )
        if not self.path.startswith("builtin:") and not Path(self.path).expanduser().exists():
            raise JudgeError(f"judge {self.name}: reward model {self.path} does not exist")
        self._model: Any = None
        self._tokenizer: Any = None

    async def start(self) -> None:
        """Nothing to start: the path was checked when the judge was built, the model loads with the first pairs."""

    async def close(self) -> None:
        self._model = self._tokenizer = None

    def _load(self) -> None:
        if self._model is not None:
            return
        try:
            from models.reward import RewardModelError, load_on_device
        except ImportError as exc:
            raise JudgeError(
                f"judge {self.name}: a reward model needs the local extra: pip install 'aligngate[local]' ({exc})"
            ) from None
        path = Path(self.path).expanduser() if not self.path.startswith("builtin:") else self.path
        try:
            self._model, self._tokenizer = load_on_device(path, self.spec.device)
        except RewardModelError as exc:
            raise JudgeError(f"judge {self.name}: {exc}") from None
        except Exception as exc:
            raise JudgeError(
                f"judge {self.name}: cannot load the reward model {self.path}: "
                f"{' '.join(str(exc).split()) or type(exc).__name__}"
            ) from None

    def _score(self, texts: Sequence[tuple[list[dict[str, str]], str]]) -> list[float]:
        from models.reward import RewardModelError, completion_scores, scoring_item

        self._load()
        try:
            items = [scoring_item(self._tokenizer, messages, answer) for messages, answer in texts]
        except RewardModelError as exc:
            raise JudgeError(f"judge {self.name}: {exc}") from None
        return completion_scores(self._model, self._tokenizer, items, self.spec.max_length, self.spec.batch_size)

    def _outcome(self, item: PairItem, candidate: float, baseline: float) -> Judgement:
        diff = candidate - baseline
        margin = self.spec.tie_margin
        outcome: Outcome = "win" if diff > margin else "lose" if diff < -margin else "tie"
        reason = "within_margin" if outcome == "tie" else None
        return item.judgement(self.name, outcome, reason, scores=(candidate, baseline))

    async def judge_all(self, items: Sequence[PairItem], done: Callable[[Judgement], None]) -> int:
        # Score every distinct (prompt, answer) once, a prompt set's worth of batches per worker-thread call.
        step = max(1, 16 * self.spec.batch_size)
        for start in range(0, len(items), step):
            chunk = items[start : start + step]
            keys: dict[tuple[str, str, str], int] = {}
            unique: list[tuple[list[dict[str, str]], str]] = []
            for item in chunk:
                for text in (item.candidate, item.baseline_text):
                    key = (item.prompt.set, item.prompt.id, text)
                    if key not in keys:
                        keys[key] = len(unique)
                        unique.append((item.prompt.wire(), text))
            scores = await asyncio.to_thread(self._score, unique)
            for item in chunk:
                p = item.prompt
                done(
                    self._outcome(
                        item,
                        scores[keys[(p.set, p.id, item.candidate)]],
                        scores[keys[(p.set, p.id, item.baseline_text)]],
                    )
                )
        return 0
