"""Upstream access: the backend protocol, the shared HTTP session, replica pools, remote OpenAI-compatible backends
and the local backend over an in-process engine."""
