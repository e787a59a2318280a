"""aligngate gateway: the OpenAI-compatible FastAPI service (routes, upstreams, pipeline, metrics)."""

__version__ = "0.1.0"
