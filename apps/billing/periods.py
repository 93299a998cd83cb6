"""Closing budget periods (reset_budgets and its beat task)."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.db.models import Count, Sum
from django.utils import timezone

from apps.controls.models import Period, SpendRollup
from apps.controls.switches import switches_reset

from .money import format_usd
from .windows import period_window


def periods_close(
    *,
    period: str | None = None,
    tenant_schema: str | None = None,
    user_email: str | None = None,
    dry_run: bool = False,
    actor: str = "system:reset_budgets",
    now: datetime | None = None,
) -> list[str]:
    """Clear the automatic switches of ended periods; report the last closed
    period's spend per tenant (from the public rollup). Lines for a person."""
    now = now or timezone.now()
    verb = "would clear" if dry_run else "cleared"
    cleared = switches_reset(
        period=period, tenant_schema=tenant_schema, user_email=user_email, dry_run=dry_run, actor=actor, now=now
    )
    lines = [f"{verb} the kill switch of {s.describe()} (hard limit, period {s.period})" for s in cleared]
    if not cleared:
        lines.append("no automatic kill switch to clear")
    for kind in [period] if period else Period.values:
        closed = period_window(kind, period_window(kind, now).start - timedelta(seconds=1))
        rows = SpendRollup.objects.filter(day__gte=closed.start.date(), day__lt=closed.end.date())
        if tenant_schema:
            rows = rows.filter(tenant__schema_name=tenant_schema)
        totals = rows.values("tenant__schema_name").annotate(
            cost=Sum("cost_micros"), models=Count("model", distinct=True)
        )
        for row in totals.order_by("tenant__schema_name"):
            lines.append(
                f"closed {kind} {closed.ident}: tenant {row['tenant__schema_name']} spent {format_usd(row['cost'])}"
            )
    return lines
