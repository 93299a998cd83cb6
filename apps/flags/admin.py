from decimal import Decimal

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from apps.core.admin_sites import operator_site, tenant_site

from .models import Flag


def _set_rollout(percent: int):  # type: ignore[no-untyped-def]
    # Django formats descriptions with `%`: a literal percent sign is doubled.
    @admin.action(description=f"Set rollout to {percent}%% (and enable)" if percent else "Set rollout to 0%%")
    def action(modeladmin: admin.ModelAdmin[Flag], request: HttpRequest, queryset: QuerySet[Flag]) -> None:
        for flag in queryset:  # saved one by one: each save is broadcast to every process
            flag.rollout_percent = Decimal(percent)
            flag.enabled = flag.enabled or percent > 0
            flag.save(update_fields=["rollout_percent", "enabled", "updated_at"])
        modeladmin.message_user(request, f"{queryset.count()} flag(s) now at {percent}%.", messages.SUCCESS)

    action.__name__ = f"set_rollout_{percent}"
    return action


class FlagAdmin(admin.ModelAdmin[Flag]):
    list_display = ("key", "model", "rollout_model", "enabled", "rollout_percent", "bucket_by", "tier", "updated_at")
    list_filter = ("enabled", "bucket_by", "tier", "model")
    search_fields = ("key", "description", "model", "rollout_model")
    actions = [_set_rollout(p) for p in (0, 5, 25, 50, 100)]
    readonly_fields = ("updated_at",)


operator_site.register(Flag, FlagAdmin)
tenant_site.register(Flag, FlagAdmin)
