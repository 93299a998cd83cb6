"""API key format and hashing. Pure functions: no database.

A key reads `aip_<prefix>_<secret>`. The prefix is public (it names the key in
the admin and routes the request to its tenant); the secret is shown once and
stored only as HMAC-SHA256(pepper, secret), compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from django.conf import settings

KEY_SCHEME = "aip"
PREFIX_BYTES = 5  # 10 hex characters: 2^40 prefixes, collisions retried at creation
SECRET_BYTES = 32  # 256 bits of secret


@dataclass(frozen=True, slots=True)
class ParsedKey:
    prefix: str
    secret: str


def generate_key() -> tuple[str, ParsedKey]:
    prefix = secrets.token_hex(PREFIX_BYTES)
    secret = secrets.token_urlsafe(SECRET_BYTES)
    return f"{KEY_SCHEME}_{prefix}_{secret}", ParsedKey(prefix=prefix, secret=secret)


def parse_key(raw: str) -> ParsedKey | None:
    scheme, sep, rest = raw.partition("_")
    if scheme != KEY_SCHEME or not sep:
        return None
    prefix, sep, secret = rest.partition("_")
    if not sep or len(prefix) != PREFIX_BYTES * 2 or not secret or len(secret) > 128:
        return None
    return ParsedKey(prefix=prefix, secret=secret)


def parse_bearer(header: str) -> ParsedKey | None:
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return parse_key(token.strip())


def hash_secret(secret: str) -> str:
    pepper = settings.API_KEY_PEPPER.encode()
    return hmac.new(pepper, secret.encode(), hashlib.sha256).hexdigest()


def secret_matches(secret: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_secret(secret), stored_hash)
