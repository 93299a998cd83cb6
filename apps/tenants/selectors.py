from __future__ import annotations

import threading
import time
from collections import OrderedDict

from django.conf import settings

from apps.core.ttlcache import TTLCache

from .models import ApiKeyRoute, Tenant

# Found routes and unknown prefixes are cached apart: anyone can send random
# prefixes, and if those shared one LRU with the real routes they would evict
# them (every real request would then query Postgres again).
_route_cache: TTLCache[Tenant] = TTLCache(maxsize=10_000)
MISS_CACHE_SIZE = 2_000


class _MissCache:
    """Prefixes known to have no active route, for a while; bounded, oldest out first."""

    def __init__(self, *, maxsize: int) -> None:
        self._data: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()
        self._maxsize = maxsize

    def __contains__(self, prefix: str) -> bool:
        with self._lock:
            expires = self._data.get(prefix)
            return expires is not None and expires > time.monotonic()

    def add(self, prefix: str, ttl: float) -> None:
        with self._lock:
            self._data[prefix] = time.monotonic() + ttl
            self._data.move_to_end(prefix)
            while len(self._data) > self._maxsize:
                self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()


_miss_cache = _MissCache(maxsize=MISS_CACHE_SIZE)


class _NoRoute(Exception):
    pass


def tenant_for_key_prefix(prefix: str) -> Tenant | None:
    """The active tenant that owns an API key prefix, or None. One indexed query
    on a miss; cached for API_KEY_CACHE_SECONDS so that a deactivated tenant stops
    being served within that time. Unknown prefixes are cached apart (bounded), so
    they never push a real route out."""
    ttl = settings.API_KEY_CACHE_SECONDS

    def load() -> Tenant:
        route = ApiKeyRoute.objects.select_related("tenant").filter(prefix=prefix).first()
        if route is None or not route.tenant.is_active:
            raise _NoRoute
        return route.tenant

    if ttl > 0 and prefix in _miss_cache:
        return None
    try:
        return _route_cache.get_or_load(prefix, ttl, load)
    except _NoRoute:
        if ttl > 0:
            _miss_cache.add(prefix, ttl)
        return None


def tenant_route_cache_clear() -> None:
    _route_cache.clear()
    _miss_cache.clear()
