from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from apps.core.admin_sites import tenant_site

from .models import ApiKey, User
from .services import api_key_create, api_key_revoke


@admin.register(User, site=tenant_site)
class UserAdmin(admin.ModelAdmin[User]):
    """A tenant admin adds users and (de)activates them. The tier is the operator's
    (it buys premium budgets and limits: `create_api_key --tier`), and a user's
    e-mail is their identity once created (budgets, ledger, flags name it)."""

    list_display = ("email", "tier", "is_active", "created_at")
    list_filter = ("tier", "is_active")
    search_fields = ("email",)

    def get_readonly_fields(self, request, obj=None):  # type: ignore[no-untyped-def]
        return ("email", "tier", "created_at") if obj else ("tier",)


class ApiKeyCreateForm(forms.ModelForm[ApiKey]):
    class Meta:
        model = ApiKey
        fields = ("user", "name")


@admin.register(ApiKey, site=tenant_site)
class ApiKeyAdmin(admin.ModelAdmin[ApiKey]):
    list_display = ("__str__", "user", "name", "created_at", "revoked_at")
    list_filter = ("revoked_at",)
    search_fields = ("prefix", "user__email", "name")
    actions = ("revoke",)

    def get_form(self, request, obj=None, change=False, **kwargs):  # type: ignore[no-untyped-def]
        if obj is None:
            kwargs["form"] = ApiKeyCreateForm
        return super().get_form(request, obj, change, **kwargs)

    def get_readonly_fields(self, request, obj=None):  # type: ignore[no-untyped-def]
        # Only the label may change: an admin key is the operator's to make
        # (`create_api_key --admin`), and revoking is an action.
        return ("user", "prefix", "is_admin", "created_at", "revoked_at") if obj else ()

    def save_model(self, request: HttpRequest, obj: ApiKey, form, change: bool) -> None:  # type: ignore[no-untyped-def]
        if change:
            super().save_model(request, obj, form, change)
            return
        key, raw = api_key_create(user=obj.user, name=obj.name)
        obj.pk = key.pk
        self.message_user(request, f"New API key (shown once, copy it now): {raw}", messages.WARNING)

    @admin.action(description="Revoke selected keys")
    def revoke(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        for key in queryset.filter(revoked_at__isnull=True):
            api_key_revoke(key=key)
        self.message_user(request, "Revoked.")
