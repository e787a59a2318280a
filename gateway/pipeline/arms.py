"""Which arm a request runs: the ``X-Aligngate-Arm`` header when the experiment allows it, else the default.

The default is the experiment's heaviest arm (ties: the first listed); per-user assignment by hashing
comes with the experiments issue and slots in here.
"""

from __future__ import annotations

from typing import Literal, cast

from gateway.config import ARM_HELPERS, ARMS, ExperimentSettings, HelpersSettings
from gateway.errors import BadRequest

Arm = Literal["control", "rewrite", "align", "rewrite+align"]
ARM_HEADER = "x-aligngate-arm"


def helpers_of(arm: Arm) -> tuple[str, ...]:
    return ARM_HELPERS[arm]


class ArmChooser:
    def __init__(self, experiment: ExperimentSettings, helpers: HelpersSettings) -> None:
        self.allow_override = experiment.allow_override
        weights = experiment.arms
        self.default: Arm = cast(Arm, max(weights, key=lambda a: weights[a]))
        self._configured = {name for name in ("rewriter", "aligner") if getattr(helpers, name) is not None}

    def choose(self, header: str | None) -> Arm:
        """The arm for a request whose ``X-Aligngate-Arm`` header is ``header`` (None when absent)."""
        if header is None or not self.allow_override:
            return self.default
        arm = header.strip().lower()
        if arm not in ARMS:
            raise BadRequest(
                f"Unknown arm {header!r} in X-Aligngate-Arm; arms are {', '.join(ARMS)}.",
                param="X-Aligngate-Arm", code="invalid_arm",
            )
        missing = [h for h in ARM_HELPERS[arm] if h not in self._configured]
        if missing:
            raise BadRequest(
                f"Arm {arm!r} needs helpers.{missing[0]}, which this gateway does not configure.",
                param="X-Aligngate-Arm", code="arm_unavailable",
            )
        return cast(Arm, arm)
