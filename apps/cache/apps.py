from django.apps import AppConfig


class CacheConfig(AppConfig):
    """Answer caches: exact repeats in Redis (per-tenant keys) with single flight.
    Tenant schema: the semantic cache's entries (pgvector)."""

    name = "apps.cache"
    label = "answer_cache"
