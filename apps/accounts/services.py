from __future__ import annotations

from django.db import IntegrityError, transaction
from django.utils import timezone

from apps.tenants.db import tenant_connection
from apps.tenants.models import ApiKeyRoute, Tenant

from .keys import generate_key, hash_secret
from .models import ApiKey, Tier, User
from .selectors import principal_cache_clear

_PREFIX_ATTEMPTS = 5


def user_get_or_create(*, email: str, tier: str | None = None) -> tuple[User, bool]:
    """The user with this email in the current tenant; a given tier updates it."""
    if tier is not None and tier not in Tier.values:
        raise ValueError(f"tier must be one of {', '.join(Tier.values)}, got {tier!r}")
    user, created = User.objects.get_or_create(email=email.lower(), defaults={"tier": tier or Tier.STANDARD})
    if not created and tier is not None and user.tier != tier:
        user.tier = tier
        user.save(update_fields=["tier"])
    return user, created


def api_key_create(*, user: User, name: str = "", is_admin: bool = False) -> tuple[ApiKey, str]:
    """Create a key for `user` (current tenant schema). Returns the row and the raw
    key, which is not stored anywhere and cannot be shown again."""
    tenant = tenant_connection().tenant
    if not isinstance(tenant, Tenant):
        raise RuntimeError("api_key_create must run inside a tenant schema")
    for _ in range(_PREFIX_ATTEMPTS):
        raw, parsed = generate_key()
        try:
            with transaction.atomic():
                # The route lives in the public schema; the same transaction keeps
                # the two rows consistent.
                ApiKeyRoute.objects.create(prefix=parsed.prefix, tenant=tenant)
                key = ApiKey.objects.create(
                    user=user,
                    name=name,
                    prefix=parsed.prefix,
                    secret_hash=hash_secret(parsed.secret),
                    is_admin=is_admin,
                )
            return key, raw
        except IntegrityError:
            continue  # prefix collision (2^-40 per pair): draw again
    raise RuntimeError("could not allocate a unique API key prefix")


def api_key_revoke(*, key: ApiKey) -> None:
    if key.revoked_at is None:
        key.revoked_at = timezone.now()
        key.save(update_fields=["revoked_at"])
    # This process forgets at once; others within API_KEY_CACHE_SECONDS.
    principal_cache_clear()
