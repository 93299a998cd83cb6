from django.contrib import admin

from apps.core.admin_sites import tenant_site

from .models import UserRateLimit


@admin.register(UserRateLimit, site=tenant_site)
class UserRateLimitAdmin(admin.ModelAdmin[UserRateLimit]):
    list_display = ("user", "tokens_per_minute", "burst_tokens", "requests_per_minute")
    search_fields = ("user__email",)
    autocomplete_fields = ("user",)
