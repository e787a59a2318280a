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


class Readiness(BaseModel):
    status: Literal["ready", "not_ready"]
    backends: dict[str, BackendReadiness]
