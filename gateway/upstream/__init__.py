"""Upstream access: the shared HTTP session, replica pools, and remote OpenAI-compatible backends."""
