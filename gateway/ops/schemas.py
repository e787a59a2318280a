"""Response schemas of the operational routes."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class BackendReadiness(BaseModel):
    ready: bool
    replicas_up: int
    replicas: int


class HelperProbe(BaseModel):
    """A helper's start-up probe (``gateway/pipeline/probe.py``): ``pending`` until it has run."""

    status: Literal["pending", "ok", "warning", "failed"]
    template: str
    reason: str | None = None
    hint: str | None = None
    output: str | None = None
    ms: float | None = None


class Readiness(BaseModel):
    status: Literal["ready", "not_ready"]
    backends: dict[str, BackendReadiness]
    #: Only when helpers are configured and probed (``helpers.probe``); not part of ``status``.
    helpers: dict[str, HelperProbe] | None = None
