from django.apps import AppConfig


class ControlsConfig(AppConfig):
    """Public schema: what operators set across tenants (tenant and tier budgets)
    and the daily spend rollup they read across tenants."""

    name = "apps.controls"
    label = "controls"
