"""Which arm a request runs: the forced ``X-Aligngate-Arm`` header when the experiment allows it, else the
arm the user is assigned to.

**Assignment.** A user keeps their arm. The user key is ``X-Aligngate-User``, else the request's ``user``
field, else the API key (its SHA-256, never the token itself), else a random draw per request. The key is
hashed with the experiment's name into one of :data:`BUCKETS` buckets (SHA-256 → integer), and a fixed
table maps buckets to arms. Nothing is stored and nothing is random: every replica and every restart
computes the same table from the same ``experiment.name`` and ``experiment.arms``.

**The table: weighted rendezvous hashing.** Each (bucket, arm) pair gets a pseudo-random number
``u`` in (0, 1) from SHA-256 of (experiment, arm, bucket); the bucket goes to the arm with the smallest
``-ln(u) / weight``. That is a race of exponential clocks with rates equal to the weights, so an arm wins a
share of the buckets equal to its share of the weights, and an arm of weight 0 wins none. Because each
arm's score depends only on its own weight, changing one arm's weight moves users only between that arm and
the others, never between two untouched arms: going from 1:1:1:1 to 2:1:1:1 moves the 15 % of users who
must move (control's share grows from 25 % to 40 %) and nobody else, where contiguous bucket ranges in a
fixed arm order would move 30 % (each boundary shifts). Adding an arm takes only its own users from each of
the others; removing one (weight 0) hands only its users to the others, in proportion to their weights.
Renaming the experiment starts a new, independent assignment.
"""

from __future__ import annotations

import functools
import hashlib
import math
import random
from dataclasses import dataclass
from typing import Literal

from gateway.config import ARMS, Arm, ExperimentSettings, HelpersSettings
from gateway.errors import BadRequest

ARM_HEADER = "x-aligngate-arm"
USER_HEADER = "x-aligngate-user"
#: Buckets a user key hashes into; shares are exact to 1/BUCKETS (plus the table's sampling noise).
BUCKETS = 10_000

UserSource = Literal["header", "user", "api_key", "random"]


def helpers_of(arm: Arm) -> tuple[str, ...]:
    return Arm(arm).helpers


def _unit(data: bytes) -> float:
    """A number in (0, 1) from SHA-256 of ``data``, the same on every machine."""
    return (int.from_bytes(hashlib.sha256(data).digest()[:8], "big") + 0.5) / 2.0**64


def bucket_of(experiment: str, user_key: str) -> int:
    """The bucket of ``user_key`` in ``experiment`` (0 .. BUCKETS-1)."""
    digest = hashlib.sha256(f"{experiment}\x00{user_key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


#: The calibrated table's largest miss of an arm's exact share, in buckets (0.05 points).
_CALIBRATION_TOLERANCE = 5


def _winner(clocks: list[float], inverse_rates: list[float]) -> int:
    best, best_score = 0, math.inf
    for i, clock in enumerate(clocks):
        score = clock * inverse_rates[i]
        if score < best_score:
            best, best_score = i, score
    return best


@functools.lru_cache(maxsize=32)
def bucket_table(experiment: str, weights: tuple[tuple[str, float], ...]) -> tuple[Arm, ...]:
    """The arm of every bucket (weighted rendezvous hashing, see the module docstring), cached.

    Plain rendezvous gives each arm its share of the weights in expectation, off by the sampling noise of
    BUCKETS draws (±0.4 points for 1:1:1:1). A few rounds of calibration (each arm's rate scaled by target /
    actual) make every share exact to ``_CALIBRATION_TOLERANCE`` buckets; the rates then differ from the
    weights by about that noise, so a weight change also moves a few tenths of a percent of users between
    untouched arms. Building a table takes ~0.1-0.3 s.
    """
    arms = [arm for arm in ARMS if dict(weights).get(arm, 0) > 0]
    if not arms:
        raise ValueError("at least one arm needs a positive weight")
    if len(arms) == 1:
        return (arms[0],) * BUCKETS
    prefix = experiment.encode() + b"\x00"
    clocks = [
        [-math.log(_unit(prefix + arm.encode() + b"\x00%d" % bucket)) for arm in arms] for bucket in range(BUCKETS)
    ]
    given = dict(weights)
    total = sum(given[arm] for arm in arms)
    targets = [given[arm] / total * BUCKETS for arm in arms]
    rates = [given[arm] for arm in arms]
    k = range(len(arms))
    best: tuple[float, list[int]] | None = None
    for _ in range(40):
        inverse = [1.0 / r for r in rates]
        owners = [_winner(c, inverse) for c in clocks]
        counts = [0] * len(arms)
        for owner in owners:
            counts[owner] += 1
        miss = max(abs(counts[i] - targets[i]) for i in k)
        if best is None or miss < best[0]:
            best = (miss, owners)
        if miss <= _CALIBRATION_TOLERANCE:
            break
        rates = [rates[i] * (targets[i] / max(counts[i], 1)) ** 0.8 for i in k]
    assert best is not None
    return tuple(arms[owner] for owner in best[1])


@dataclass(frozen=True, slots=True)
class Assignment:
    arm: Arm
    #: The arm came from ``X-Aligngate-Arm`` (outside the experiment's assignment).
    forced: bool
    #: The user's bucket; None for a random draw or a forced arm without a user key.
    bucket: int | None


def user_key(header: str | None, user_field: str | None, authorization: str | None) -> tuple[str | None, UserSource]:
    """The key a request's user is assigned by, and where it came from (``random``: no key)."""
    if header is not None and (value := header.strip()):
        return value, "header"
    if user_field:
        return user_field, "user"
    if authorization:
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() == "bearer" and token:
            return "api-key:" + hashlib.sha256(token.encode("utf-8")).hexdigest(), "api_key"
    return None, "random"


class ArmChooser:
    def __init__(self, experiment: ExperimentSettings, helpers: HelpersSettings) -> None:
        self.experiment = experiment.name
        self.allow_override = experiment.allow_override
        self.weights = {arm: w for arm, w in experiment.arms.items() if w > 0}
        self._table = bucket_table(experiment.name, tuple(sorted(experiment.arms.items())))
        self._configured = {name for name in ("rewriter", "aligner") if getattr(helpers, name) is not None}

    def arm_of(self, bucket: int) -> Arm:
        return self._table[bucket]

    def choose(self, header: str | None, user_key: str | None = None) -> Assignment:
        """The arm for a request whose ``X-Aligngate-Arm`` header is ``header`` (None when absent) and whose
        user key is ``user_key`` (None: a random draw)."""
        bucket = bucket_of(self.experiment, user_key) if user_key is not None else None
        if header is not None and self.allow_override:
            return Assignment(self._forced(header), True, bucket)
        if bucket is None:
            return Assignment(self.arm_of(random.randrange(BUCKETS)), False, None)
        return Assignment(self.arm_of(bucket), False, bucket)

    def _forced(self, header: str) -> Arm:
        try:
            arm = Arm(header.strip().lower())
        except ValueError:
            raise BadRequest(
                f"Unknown arm {header!r} in X-Aligngate-Arm; arms are {', '.join(ARMS)}.",
                param="X-Aligngate-Arm", code="invalid_arm",
            ) from None
        missing = [h for h in arm.helpers if h not in self._configured]
        if missing:
            raise BadRequest(
                f"Arm {arm.value!r} needs helpers.{missing[0]}, which this gateway does not configure.",
                param="X-Aligngate-Arm", code="arm_unavailable",
            )
        return arm
