from django.apps import AppConfig


class BillingConfig(AppConfig):
    """Tenant schema: the cost ledger and the users' budgets."""

    name = "apps.billing"
    label = "billing"
