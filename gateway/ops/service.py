"""Readiness: probes every replica of every backend now (concurrently, bounded by the probe timeout)."""

from __future__ import annotations

import asyncio

from gateway.ops.schemas import BackendReadiness, Readiness
from gateway.upstream.backend import RemoteBackend


async def readiness(backends: dict[str, RemoteBackend]) -> Readiness:
    """Ready when every backend has at least one replica answering ``GET /models``."""
    names = list(backends)
    probes = [asyncio.gather(*(b.probe(r) for r in b.pool.replicas)) for b in backends.values()]
    results = await asyncio.gather(*probes)
    out: dict[str, BackendReadiness] = {}
    for name, oks in zip(names, results, strict=True):
        up = sum(1 for ok in oks if ok)
        out[name] = BackendReadiness(ready=up > 0, replicas_up=up, replicas=len(oks))
    ready = bool(out) and all(b.ready for b in out.values())
    return Readiness(status="ready" if ready else "not_ready", backends=out)
