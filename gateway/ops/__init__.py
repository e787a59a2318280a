"""Operational routes: liveness, readiness and Prometheus metrics (never behind the API key)."""
