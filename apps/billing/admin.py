from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from apps.core.admin_sites import tenant_site

from .models import LedgerEntry, UserBudget
from .money import format_usd


@admin.register(LedgerEntry, site=tenant_site)
class LedgerEntryAdmin(admin.ModelAdmin[LedgerEntry]):
    """Read-only: the ledger is append-only (corrections are new adjustment entries)."""

    list_display = ("created_at", "kind", "user", "model", "input_tokens", "output_tokens", "cost", "saved", "job")
    list_filter = ("kind", "model")
    search_fields = ("user__email", "job__id")
    date_hierarchy = "created_at"
    list_select_related = ("user",)

    @admin.display(description="cost")
    def cost(self, entry: LedgerEntry) -> str:
        return format_usd(entry.cost_micros)

    @admin.display(description="saved")
    def saved(self, entry: LedgerEntry) -> str:
        return format_usd(entry.saved_micros) if entry.saved_micros else ""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(UserBudget, site=tenant_site)
class UserBudgetAdmin(admin.ModelAdmin[UserBudget]):
    list_display = ("user", "period", "limit_usd", "soft_percent")
    list_filter = ("period",)
    search_fields = ("user__email",)
    autocomplete_fields = ("user",)
