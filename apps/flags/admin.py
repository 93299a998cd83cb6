import re
from decimal import Decimal
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db import transaction
from django.db.models import QuerySet
from django.http import HttpRequest

from apps.core.admin_sites import operator_site, tenant_site

from .models import Flag, FlagChange, flag_snapshot


def _audit(request: HttpRequest, flag: Flag, old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
    if old != new:
        actor = getattr(request.user, "get_username", lambda: "unknown")()
        kept = flag if new is not None else None  # a deleted flag's history keeps its key
        FlagChange.objects.create(flag=kept, flag_key=flag.key, actor=actor, old=old, new=new)


def _set_rollout(percent: int):  # type: ignore[no-untyped-def]
    # Django formats descriptions with `%`: a literal percent sign is doubled.
    @admin.action(description=f"Set rollout to {percent}%% (and enable)" if percent else "Set rollout to 0%%")
    def action(modeladmin: admin.ModelAdmin[Flag], request: HttpRequest, queryset: QuerySet[Flag]) -> None:
        for flag in queryset:  # saved one by one: each save is audited and broadcast to every process
            with transaction.atomic():
                old = flag_snapshot(flag)
                flag.rollout_percent = Decimal(percent)
                flag.enabled = flag.enabled or percent > 0
                flag.save(update_fields=["rollout_percent", "enabled", "updated_at"])
                _audit(request, flag, old, flag_snapshot(flag))
        modeladmin.message_user(request, f"{queryset.count()} flag(s) now at {percent}%.", messages.SUCCESS)

    action.__name__ = f"set_rollout_{percent}"
    return action


class FlagChangeInline(admin.TabularInline[FlagChange, Flag]):
    model = FlagChange
    extra = 0
    can_delete = False
    fields = ("at", "actor", "old", "new")
    readonly_fields = fields
    verbose_name_plural = "history (who changed what)"

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class FlagAdmin(admin.ModelAdmin[Flag]):
    list_display = ("key", "model", "rollout_model", "enabled", "rollout_percent", "bucket_by", "tier", "updated_at")
    list_filter = ("enabled", "bucket_by", "tier", "model")
    search_fields = ("key", "description", "model", "rollout_model")
    actions = [_set_rollout(p) for p in (0, 5, 25, 50, 100)]
    readonly_fields = ("updated_at",)
    inlines = (FlagChangeInline,)

    def save_model(self, request: HttpRequest, obj: Flag, form: Any, change: bool) -> None:
        old = flag_snapshot(Flag.objects.get(pk=obj.pk)) if change else None
        with transaction.atomic():
            super().save_model(request, obj, form, change)
            _audit(request, obj, old, flag_snapshot(obj))

    def delete_model(self, request: HttpRequest, obj: Flag) -> None:
        with transaction.atomic():
            _audit(request, obj, flag_snapshot(obj), None)
            super().delete_model(request, obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Flag]) -> None:
        for flag in queryset:  # the bulk "delete selected" action: audited one by one
            self.delete_model(request, flag)


_QUALIFIED_USER = re.compile(r"[a-z0-9_]+:[^:\s@]+@[^:\s@]+")


class PlatformFlagForm(forms.ModelForm[Flag]):
    """A platform flag names users within their tenant: `<schema>:<e-mail>` (see
    apps/flags/rollout.py; a bare e-mail would match nobody)."""

    class Meta:
        model = Flag
        fields = ("allow_users", "deny_users")  # the admin adds its other fields

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for name, what in (("allow_users", "always on (when enabled)"), ("deny_users", "always off")):
            if name in self.fields:
                self.fields[name].help_text = f'Users {what}, as ["<schema>:<e-mail>", ...].'

    def _qualified(self, field: str) -> list[str]:
        entries = self.cleaned_data.get(field) or []
        if not isinstance(entries, list):
            raise forms.ValidationError('A list of users, as ["<schema>:<e-mail>", ...].')
        for entry in entries:
            if not isinstance(entry, str) or not _QUALIFIED_USER.fullmatch(entry.strip().lower()):
                raise forms.ValidationError(
                    f"A platform flag names users as <schema>:<e-mail> (e.g. acme:alice@acme.test), not {entry!r}."
                )
        return [entry.strip().lower() for entry in entries]

    def clean_allow_users(self) -> list[str]:
        return self._qualified("allow_users")

    def clean_deny_users(self) -> list[str]:
        return self._qualified("deny_users")


class PlatformFlagAdmin(FlagAdmin):
    form = PlatformFlagForm


operator_site.register(Flag, PlatformFlagAdmin)
tenant_site.register(Flag, FlagAdmin)
