"""ASGI test helpers: a receive channel that delivers one request body, then a disconnect once told to."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any


def hang_up_after(body: bytes, gone: asyncio.Event) -> Callable[[], Awaitable[dict[str, Any]]]:
    """An ASGI ``receive`` that returns ``body`` as the whole request, then ``http.disconnect`` once ``gone`` is set."""
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    return receive
