from __future__ import annotations

from django.conf import settings

from apps.core.ttlcache import TTLCache

from .models import ApiKeyRoute, Tenant

_route_cache: TTLCache[Tenant | None] = TTLCache()


def tenant_for_key_prefix(prefix: str) -> Tenant | None:
    """The active tenant that owns an API key prefix, or None. One indexed query
    on a miss; cached for API_KEY_CACHE_SECONDS so that a deactivated tenant stops
    being served within that time."""

    def load() -> Tenant | None:
        route = ApiKeyRoute.objects.select_related("tenant").filter(prefix=prefix).first()
        if route is None or not route.tenant.is_active:
            return None
        return route.tenant

    return _route_cache.get_or_load(prefix, settings.API_KEY_CACHE_SECONDS, load)


def tenant_route_cache_clear() -> None:
    _route_cache.clear()
