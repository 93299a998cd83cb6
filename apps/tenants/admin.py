from django import forms
from django.contrib import admin
from django.contrib.auth.admin import GroupAdmin, UserAdmin
from django.contrib.auth.models import Group, User

from apps.core.admin_sites import operator_site, tenant_site

from .models import ApiKeyRoute, Domain, Tenant


class DomainInline(admin.TabularInline[Domain, Tenant]):
    model = Domain
    extra = 0


class TenantForm(forms.ModelForm[Tenant]):
    """The tenant's webhook and alert URLs are called by our workers: the same
    rules as a job's webhook (http(s), public addresses) apply when they are saved,
    and again at every delivery."""

    class Meta:
        model = Tenant
        fields = ("webhook_url", "alert_webhook_url")  # the admin adds its other fields

    def _checked_url(self, field: str) -> str:
        from apps.core.errors import ApiError
        from apps.core.webhooks import webhook_url_check

        url: str = self.cleaned_data.get(field) or ""
        if url:
            try:
                webhook_url_check(url, param=field)
            except ApiError as exc:
                raise forms.ValidationError(exc.message) from exc
        return url

    def clean_webhook_url(self) -> str:
        return self._checked_url("webhook_url")

    def clean_alert_webhook_url(self) -> str:
        return self._checked_url("alert_webhook_url")


@admin.register(Tenant, site=operator_site)
class TenantAdmin(admin.ModelAdmin[Tenant]):
    form = TenantForm
    list_display = ("schema_name", "name", "is_active", "ratelimit_fail_open", "created_at")
    list_filter = ("is_active", "ratelimit_fail_open")
    search_fields = ("schema_name", "name")
    inlines = (DomainInline,)

    def get_readonly_fields(self, request, obj=None):  # type: ignore[no-untyped-def]
        # A schema cannot be renamed once created.
        return ("schema_name", "created_at", "webhook_secret") if obj else ("created_at", "webhook_secret")


@admin.register(ApiKeyRoute, site=operator_site)
class ApiKeyRouteAdmin(admin.ModelAdmin[ApiKeyRoute]):
    list_display = ("prefix", "tenant", "created_at")
    search_fields = ("prefix", "tenant__schema_name")
    readonly_fields = ("prefix", "tenant", "created_at")

    def has_add_permission(self, request):  # type: ignore[no-untyped-def]
        return False  # created with the key, in the tenant's admin or create_api_key


# Staff logins exist per schema: operators in public, each tenant's admins in its own.
for site in (operator_site, tenant_site):
    site.register(User, UserAdmin)
    site.register(Group, GroupAdmin)
