from __future__ import annotations

from dataclasses import dataclass

from django.conf import settings

from apps.core.ttlcache import TTLCache
from apps.tenants.db import current_schema

from .keys import ParsedKey, secret_matches
from .models import ApiKey


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: what the API needs from a key, without ORM objects, so it can
    be cached across requests and passed to services."""

    tenant_schema: str
    user_id: int
    email: str
    tier: str
    key_id: int
    key_prefix: str
    is_admin: bool = False

    # DRF's IsAuthenticated reads these.
    is_authenticated = True
    is_anonymous = False


_principal_cache: TTLCache[tuple[str, Principal] | None] = TTLCache()


def principal_for_key(key: ParsedKey) -> Principal | None:
    """The active user behind a key in the current tenant schema, or None.

    The row (hash and principal) is cached for API_KEY_CACHE_SECONDS; the secret is
    checked against the hash on every request, so a wrong secret never rides on a
    cached success.
    """
    schema = current_schema()

    def load() -> tuple[str, Principal] | None:
        row = (
            ApiKey.objects.select_related("user")
            .filter(prefix=key.prefix, revoked_at__isnull=True, user__is_active=True)
            .first()
        )
        if row is None:
            return None
        principal = Principal(
            tenant_schema=schema,
            user_id=row.user_id,
            email=row.user.email,
            tier=row.user.tier,
            key_id=row.pk,
            key_prefix=row.prefix,
            is_admin=row.is_admin,
        )
        return row.secret_hash, principal

    entry = _principal_cache.get_or_load((schema, key.prefix), settings.API_KEY_CACHE_SECONDS, load)
    if entry is None or not secret_matches(key.secret, entry[0]):
        return None
    return entry[1]


def principal_cache_clear() -> None:
    _principal_cache.clear()
