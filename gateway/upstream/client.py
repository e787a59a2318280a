"""The one shared async HTTP client (aiohttp: its C parser keeps the proxy's CPU cost low).

One session per worker process, created at start-up and closed at shutdown; keep-alive connections are
pooled and reused across requests and backends. Per-request timeouts come from each backend's settings.
It keeps no cookies: an upstream's ``Set-Cookie`` answers one client's request and must not be sent on
another's (and a cookie jar costs a look-up per request).
"""

from __future__ import annotations

import aiohttp

#: Idle keep-alive connections are kept this long (seconds).
KEEPALIVE_S = 60.0


def make_session() -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(
        limit=0,  # no global cap: backpressure belongs to the upstream (vLLM queues), not the gateway
        keepalive_timeout=KEEPALIVE_S,
        ttl_dns_cache=300,
        enable_cleanup_closed=False,
    )
    return aiohttp.ClientSession(
        connector=connector,
        # Per-request timeouts are always given; this default only guards accidental calls without one.
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=600),
        auto_decompress=True,
        skip_auto_headers=("User-Agent",),
        raise_for_status=False,
        cookie_jar=aiohttp.DummyCookieJar(),
    )
