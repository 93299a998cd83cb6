from django.apps import AppConfig


class FlagsConfig(AppConfig):
    """Feature flags for model rollouts. The same table in the public schema
    (platform flags, operators) and in each tenant's schema (its own flags)."""

    name = "apps.flags"
    label = "flags"

    def ready(self) -> None:
        from . import signals  # noqa: F401
