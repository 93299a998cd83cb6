from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from apps.billing.money import format_usd
from apps.core.admin_sites import operator_site

from .models import SpendRollup, TenantBudget, TierBudget


@admin.register(TenantBudget, site=operator_site)
class TenantBudgetAdmin(admin.ModelAdmin[TenantBudget]):
    list_display = ("tenant", "period", "limit_usd", "soft_percent")
    list_filter = ("period",)
    search_fields = ("tenant__name", "tenant__schema_name")


@admin.register(TierBudget, site=operator_site)
class TierBudgetAdmin(admin.ModelAdmin[TierBudget]):
    list_display = ("tier", "period", "limit_usd", "soft_percent")
    list_filter = ("tier", "period")


@admin.register(SpendRollup, site=operator_site)
class SpendRollupAdmin(admin.ModelAdmin[SpendRollup]):
    """Read-only: written with each ledger entry."""

    list_display = ("day", "tenant", "model", "requests", "input_tokens", "output_tokens", "cost", "saved")
    list_filter = ("model", "tenant")
    date_hierarchy = "day"

    @admin.display(description="cost")
    def cost(self, row: SpendRollup) -> str:
        return format_usd(row.cost_micros)

    @admin.display(description="saved")
    def saved(self, row: SpendRollup) -> str:
        return format_usd(row.saved_micros)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
