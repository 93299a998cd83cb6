"""Kill switches: set them (with an audit event), and ask whether one stops a
request. Active switches are few; every process keeps them for
KILL_SWITCH_CACHE_SECONDS, and a flip clears this process's copy at once."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from rest_framework import status

from apps.core.errors import ApiError
from apps.core.ttlcache import TTLCache
from apps.tenants.models import Tenant

from .models import KillSwitch, KillSwitchEvent, SwitchLevel


@dataclass(frozen=True)
class ActiveSwitch:
    level: str
    tenant_schema: str
    user_id: int | None
    model: str
    what: str
    reason: str
    automatic: bool = False


class BudgetSwitchedOff(ApiError):
    """An automatic switch: a hard budget limit was reached this period. Answered
    like the refusal that flipped it (402 budget_exceeded; 429 insufficient_quota
    on /v1), since it is about money, not permission."""

    status_code = status.HTTP_402_PAYMENT_REQUIRED
    code = "budget_exceeded"

    def __init__(self, switch: ActiveSwitch) -> None:
        super().__init__(f"AI is switched off for {switch.what} until its budget period ends. {switch.reason}")
        self.switch = switch


class AiDisabled(ApiError):
    status_code = status.HTTP_403_FORBIDDEN
    error_type = "permission_error"
    code = "ai_disabled"

    def __init__(self, switch: ActiveSwitch) -> None:
        super().__init__(f"AI is switched off for {switch.what}: {switch.reason}")
        self.switch = switch


_cache: TTLCache[tuple[ActiveSwitch, ...]] = TTLCache(maxsize=1)


def switches_cache_clear() -> None:
    _cache.clear()


def _active() -> tuple[ActiveSwitch, ...]:
    def load() -> tuple[ActiveSwitch, ...]:
        return tuple(
            ActiveSwitch(
                level=s.level,
                tenant_schema=s.tenant.schema_name if s.tenant else "",
                user_id=s.user_id,
                model=s.model,
                what=s.describe(),
                reason=s.reason,
                automatic=s.automatic,
            )
            for s in KillSwitch.objects.filter(active=True).select_related("tenant")
        )

    return _cache.get_or_load("active", settings.KILL_SWITCH_CACHE_SECONDS, load)


def switch_blocking(*, tenant_schema: str, user_id: int, model: str) -> ActiveSwitch | None:
    """The switch that stops this request, if any (global first, then tenant, user, model)."""
    order = {SwitchLevel.GLOBAL: 0, SwitchLevel.TENANT: 1, SwitchLevel.USER: 2, SwitchLevel.MODEL: 3}
    for switch in sorted(_active(), key=lambda s: order[SwitchLevel(s.level)]):
        if (
            switch.level == SwitchLevel.GLOBAL
            or (switch.level == SwitchLevel.TENANT and switch.tenant_schema == tenant_schema)
            or (
                switch.level == SwitchLevel.USER and switch.tenant_schema == tenant_schema and switch.user_id == user_id
            )
            or (switch.level == SwitchLevel.MODEL and switch.model == model)
        ):
            return switch
    return None


def switch_check(*, tenant_schema: str, user_id: int, model: str) -> None:
    switch = switch_blocking(tenant_schema=tenant_schema, user_id=user_id, model=model)
    if switch is not None:
        raise BudgetSwitchedOff(switch) if switch.automatic else AiDisabled(switch)


def switch_set(
    *,
    level: SwitchLevel,
    active: bool,
    actor: str,
    reason: str,
    tenant: Tenant | None = None,
    user_id: int | None = None,
    user_email: str = "",
    model: str = "",
    automatic: bool = False,
    period: str = "",
) -> KillSwitch:
    """Turn a switch on or off and record who did it and why."""
    with transaction.atomic():
        switch, _ = KillSwitch.objects.select_for_update().get_or_create(
            level=level, tenant=tenant, user_id=user_id, model=model, defaults={"reason": reason}
        )
        switch.active = active
        switch.reason = reason
        switch.updated_by = actor
        switch.automatic = automatic and active
        switch.period = period if active else ""
        if user_email:
            switch.user_email = user_email
        switch.save()
        KillSwitchEvent.objects.create(switch=switch, active=active, actor=actor, reason=reason)
    switches_cache_clear()
    return switch


def _period_ended(ident: str, now: datetime) -> bool:
    """`d20261127` / `m202611`: has that period ended by `now` (UTC)?"""
    current = now.astimezone(UTC).strftime("d%Y%m%d" if ident.startswith("d") else "m%Y%m")
    return ident < current


def switches_reset(
    *,
    period: str | None = None,
    tenant_schema: str | None = None,
    user_email: str | None = None,
    dry_run: bool = False,
    actor: str = "system:reset_budgets",
    now: datetime | None = None,
) -> list[KillSwitch]:
    """Clear the automatic switches (budget hard limits) whose period has ended;
    returns them. Manual switches are never touched. Running it twice clears
    nothing the second time."""
    now = now or timezone.now()
    switches = KillSwitch.objects.filter(active=True, automatic=True).select_related("tenant")
    if period:
        switches = switches.filter(period__startswith=period[0])  # "day" -> d..., "month" -> m...
    if tenant_schema:
        switches = switches.filter(tenant__schema_name=tenant_schema)
    if user_email:
        switches = switches.filter(user_email=user_email)
    ended = [s for s in switches if _period_ended(s.period, now)]
    if not dry_run:
        for switch in ended:
            switch_set(
                level=SwitchLevel(switch.level),
                tenant=switch.tenant,
                user_id=switch.user_id,
                model=switch.model,
                active=False,
                actor=actor,
                reason=f"budget period {switch.period} ended",
            )
    return ended
