"""gateway/auth.py: plain and sha256 keys, and the three distinct refusals."""

from __future__ import annotations

import hashlib

import pytest

from gateway.auth import ApiKeyAuth, parse_key
from gateway.errors import Unauthorized


def _sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def test_parse_plain_key_is_its_digest() -> None:
    assert parse_key("secret") == hashlib.sha256(b"secret").digest()
    assert parse_key("ключ") == hashlib.sha256("ключ".encode()).digest()


def test_parse_sha256_key() -> None:
    assert parse_key("sha256:" + _sha("secret")) == hashlib.sha256(b"secret").digest()
    assert parse_key("sha256:" + _sha("secret").upper()) == hashlib.sha256(b"secret").digest()


@pytest.mark.parametrize(
    "spec",
    ["sha256:", "sha256:abc", "sha256:" + "zz" * 32, "sha256:" + "ab" * 31, "sha256:" + "ab" * 33],
)
def test_malformed_sha256_key_is_rejected(spec: str) -> None:
    with pytest.raises(ValueError, match="64 hex digits"):
        parse_key(spec)


def test_empty_key_is_rejected() -> None:
    with pytest.raises(ValueError, match="may not be empty"):
        parse_key("")
    with pytest.raises(ValueError):
        ApiKeyAuth(["ok", ""])


def test_disabled_without_keys() -> None:
    auth = ApiKeyAuth([])
    assert auth.enabled is False
    for header in (None, "", "Basic abc", "Bearer anything"):
        assert auth.check(header) is None


def test_plain_and_sha256_keys_accepted() -> None:
    auth = ApiKeyAuth(["plain-key", "sha256:" + _sha("hashed-key")])
    assert auth.enabled is True
    assert auth.check("Bearer plain-key") is None
    assert auth.check("Bearer hashed-key") is None
    assert auth.check("bearer plain-key") is None  # the scheme is case-insensitive
    assert auth.check("Bearer  plain-key ") is None  # surrounding blanks of the token are ignored


def test_a_sha256_spec_is_not_itself_a_key() -> None:
    spec = "sha256:" + _sha("hashed-key")
    with pytest.raises(Unauthorized, match="Invalid API key"):
        ApiKeyAuth([spec]).check(f"Bearer {spec}")


@pytest.mark.parametrize(
    ("header", "code", "message"),
    [
        (None, "missing_api_key", "Missing API key: send it as 'Authorization: Bearer <key>'."),
        ("", "missing_api_key", "Missing API key: send it as 'Authorization: Bearer <key>'."),
        ("Basic cGxhaW4ta2V5", "invalid_api_key", "Malformed Authorization header: expected 'Bearer <key>'."),
        ("plain-key", "invalid_api_key", "Malformed Authorization header: expected 'Bearer <key>'."),
        ("Bearer", "invalid_api_key", "Malformed Authorization header: expected 'Bearer <key>'."),
        ("Bearer   ", "invalid_api_key", "Malformed Authorization header: expected 'Bearer <key>'."),
        ("Bearer wrong-key", "invalid_api_key", "Invalid API key."),
        ("Bearer plain-key2", "invalid_api_key", "Invalid API key."),
        ("Bearer PLAIN-KEY", "invalid_api_key", "Invalid API key."),
    ],
)
def test_refusals(header: str | None, code: str, message: str) -> None:
    auth = ApiKeyAuth(["plain-key"])
    with pytest.raises(Unauthorized) as info:
        auth.check(header)
    exc = info.value
    assert exc.status == 401
    assert exc.type == "authentication_error"
    assert exc.code == code
    assert exc.message == message
