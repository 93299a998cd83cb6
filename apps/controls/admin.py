from typing import Any

from django.contrib import admin
from django.db import transaction
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse

from apps.billing.money import format_usd
from apps.core.admin_sites import operator_site

from .charts import spend_chart
from .models import (
    CachePolicy,
    FallbackPolicy,
    KillSwitch,
    KillSwitchEvent,
    RateLimit,
    SpendRollup,
    TenantBudget,
    TierBudget,
)
from .switches import switches_cache_clear


def spend_view(request: HttpRequest) -> HttpResponse:
    """The operator's daily spend chart (/admin/spend/), from the public rollup."""
    context = {**operator_site.each_context(request), "chart": spend_chart(), "title": "Spend"}
    return TemplateResponse(request, "admin/controls/spend.html", context)


operator_site.page_register("spend/", spend_view, name="spend")


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


class KillSwitchEventInline(admin.TabularInline[KillSwitchEvent, KillSwitch]):
    model = KillSwitchEvent
    extra = 0
    fields = ("at", "active", "actor", "reason")
    readonly_fields = fields
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(KillSwitch, site=operator_site)
class KillSwitchAdmin(admin.ModelAdmin[KillSwitch]):
    """Every save is audited (who, when, why) as a KillSwitchEvent."""

    list_display = ("__str__", "level", "active", "automatic", "reason", "updated_by", "updated_at")
    list_filter = ("level", "active", "automatic")
    fields = ("level", "tenant", "user_id", "user_email", "model", "active", "reason")
    inlines = (KillSwitchEventInline,)

    def save_model(self, request: HttpRequest, obj: KillSwitch, form: Any, change: bool) -> None:
        actor = request.user.get_username()
        obj.updated_by = actor
        if not obj.active:
            obj.automatic, obj.period = False, ""
        with transaction.atomic():
            super().save_model(request, obj, form, change)
            KillSwitchEvent.objects.create(switch=obj, active=obj.active, actor=actor, reason=obj.reason)
        switches_cache_clear()

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # turn it off instead: the audit trail stays


@admin.register(RateLimit, site=operator_site)
class RateLimitAdmin(admin.ModelAdmin[RateLimit]):
    list_display = ("__str__", "tier", "tenant", "tokens_per_minute", "burst_tokens", "requests_per_minute")
    list_filter = ("tier",)


@admin.register(CachePolicy, site=operator_site)
class CachePolicyAdmin(admin.ModelAdmin[CachePolicy]):
    list_display = (
        "tenant",
        "exact_ttl_seconds",
        "cache_all_requests",
        "semantic_enabled",
        "embedder_backend",
        "semantic_threshold",
    )
    search_fields = ("tenant__name", "tenant__schema_name")


@admin.register(FallbackPolicy, site=operator_site)
class FallbackPolicyAdmin(admin.ModelAdmin[FallbackPolicy]):
    list_display = ("__str__", "tier", "tenant", "semantic_cache_last")
    list_filter = ("tier",)
