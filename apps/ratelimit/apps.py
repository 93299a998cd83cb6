from django.apps import AppConfig


class RatelimitConfig(AppConfig):
    """Token buckets in Redis (no models yet: limits are configured in a later step)."""

    name = "apps.ratelimit"
    label = "ratelimit"
