"""The web pages' side of the gateway: the JSON read API under ``/ui/api/*`` (``api.py``, ``routes.py``) that the
pages read; the static pages themselves are served from here too (``routes.py``'s ``ROUTES``). ``server.ui: false``
removes every route of this package."""
