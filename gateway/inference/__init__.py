"""The OpenAI inference routes: ``/v1/chat/completions``, ``/v1/completions`` and ``/v1/models``."""
