"""aligngate gateway: the OpenAI-compatible ASGI service (routes, upstreams, pipeline, store, metrics, reports)."""

__version__ = "0.1.0"
