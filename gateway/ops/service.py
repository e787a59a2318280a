"""Readiness: asks every backend now (concurrently; remote backends probe each replica's ``GET /models``)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from gateway.ops.schemas import BackendReadiness, Readiness
from gateway.upstream.protocol import Backend


async def readiness(backends: Mapping[str, Backend]) -> Readiness:
    """Ready when every backend has at least one replica answering."""
    names = list(backends)
    results = await asyncio.gather(*(b.readiness() for b in backends.values()))
    out: dict[str, BackendReadiness] = {}
    for name, (up, total) in zip(names, results, strict=True):
        out[name] = BackendReadiness(ready=up > 0, replicas_up=up, replicas=total)
    ready = bool(out) and all(b.ready for b in out.values())
    return Readiness(status="ready" if ready else "not_ready", backends=out)
