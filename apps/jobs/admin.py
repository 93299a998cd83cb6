from django.contrib import admin, messages

from apps.core.admin_sites import tenant_site

from .models import FINAL_STATUSES, Job, WebhookDelivery


class WebhookDeliveryInline(admin.TabularInline[WebhookDelivery, Job]):
    model = WebhookDelivery
    extra = 0
    can_delete = False
    readonly_fields = ("attempt", "url", "status_code", "error", "succeeded", "created_at")

    def has_add_permission(self, request, obj=None):  # type: ignore[no-untyped-def]
        return False


@admin.register(Job, site=tenant_site)
class JobAdmin(admin.ModelAdmin[Job]):
    list_display = (
        "id",
        "user",
        "model",
        "status",
        "answered_by",
        "tier",
        "cached",
        "input_tokens",
        "output_tokens",
        "provider_latency_ms",
        "created_at",
    )
    list_filter = ("status", "model", "cached", "tier")
    search_fields = ("id", "user__email")
    date_hierarchy = "created_at"
    list_select_related = ("user",)
    inlines = (WebhookDeliveryInline,)

    def get_readonly_fields(self, request, obj=None):  # type: ignore[no-untyped-def]
        return [field.name for field in Job._meta.fields]

    def has_add_permission(self, request):  # type: ignore[no-untyped-def]
        return False  # jobs come from the API

    def has_delete_permission(self, request, obj=None):  # type: ignore[no-untyped-def]
        # A queued or running job is still to be charged and settled: only a
        # finished one may go (its ledger entries stay).
        if obj is not None and obj.status not in FINAL_STATUSES:
            return False
        return super().has_delete_permission(request, obj)

    def delete_queryset(self, request, queryset):  # type: ignore[no-untyped-def]
        unfinished = queryset.exclude(status__in=FINAL_STATUSES).count()
        if unfinished:
            self.message_user(
                request,
                f"{unfinished} queued or running job(s) were not deleted: cancel them, or wait until they end.",
                messages.WARNING,
            )
        queryset.filter(status__in=FINAL_STATUSES).delete()
