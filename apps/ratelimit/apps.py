from django.apps import AppConfig


class RatelimitConfig(AppConfig):
    """Tenant schema: users' own token limits. The buckets live in Redis."""

    name = "apps.ratelimit"
    label = "ratelimit"
