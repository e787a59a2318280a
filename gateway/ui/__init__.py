"""The web pages of the gateway under ``/ui``: the playground, experiment and trace pages (``pages.py`` serves
``static/``) and the JSON read API ``/ui/api/*`` they read (``api.py``, ``schemas.py``); ``routes.py`` holds both
route lists. ``server.ui: false`` removes every route of this package."""
