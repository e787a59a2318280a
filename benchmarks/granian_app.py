"""aligngate's ASGI app for granian, which has no app-factory option: ``granian --interface asgi granian_app:app``
(``PYTHONPATH`` holding this folder and the checkout) builds ``gateway.app.app_from_env()`` at import, in each
worker, from ``ALIGNGATE_CONFIG``. Used by ``benchmarks/proxy_capacity.py`` to compare granian with uvicorn."""

from __future__ import annotations

from gateway.app import app_from_env

app = app_from_env()
