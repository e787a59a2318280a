"""Client authentication: ``server.api_keys`` (plain or ``sha256:<hex>``) checked against a Bearer token.

Keys are kept only as SHA-256 digests; the presented token is hashed and compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac

from gateway.errors import Unauthorized


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


def parse_key(spec: str) -> bytes:
    """The SHA-256 digest a configured key stands for."""
    if spec.startswith("sha256:"):
        hexpart = spec[len("sha256:"):].strip().lower()
        try:
            raw = bytes.fromhex(hexpart)
        except ValueError:
            raw = b""
        if len(raw) != 32:
            raise ValueError("an api key of the form sha256:<hex> needs 64 hex digits")
        return raw
    if not spec:
        raise ValueError("an api key may not be empty")
    return _digest(spec)


class ApiKeyAuth:
    def __init__(self, keys: list[str]) -> None:
        self._digests = [parse_key(k) for k in keys]

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def check(self, authorization: str | None) -> None:
        """Raise ``Unauthorized`` unless the ``Authorization`` header carries an accepted key."""
        if not self._digests:
            return
        if not authorization:
            raise Unauthorized(
                "Missing API key: send it as 'Authorization: Bearer <key>'.", code="missing_api_key"
            )
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized("Malformed Authorization header: expected 'Bearer <key>'.")
        presented = _digest(token)
        ok = False
        for digest in self._digests:  # no early exit: time does not depend on which key matched
            ok |= hmac.compare_digest(presented, digest)
        if not ok:
            raise Unauthorized("Invalid API key.")
