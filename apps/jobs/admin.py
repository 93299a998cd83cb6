from django.contrib import admin

from apps.core.admin_sites import tenant_site

from .models import Job, WebhookDelivery


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
