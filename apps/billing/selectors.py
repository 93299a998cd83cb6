"""Reading spend from the ledger (the usage API, spend_report, the spend chart)."""

from __future__ import annotations

from datetime import date
from typing import Any

from django.db.models import Count, F, Q, Sum
from django.db.models.functions import TruncDay

from .models import LedgerEntry, LedgerKind
from .money import format_usd

GROUPS = {"day": "day", "model": "model", "user": "user__email"}
SPEND = Q(kind__in=[LedgerKind.CHARGE, LedgerKind.REFUND, LedgerKind.ADJUSTMENT])


def usage_summary(*, since: date, group_by: str, user_id: int | None = None) -> list[dict[str, Any]]:
    """Spend per day, model or user since `since` (UTC), in the current tenant
    schema; one user's only when `user_id` is given. Calls counts charges and
    cached answers; cost nets refunds and adjustments; saved is what cached answers
    would have cost."""
    entries = LedgerEntry.objects.filter(created_at__date__gte=since)
    if user_id is not None:
        entries = entries.filter(user_id=user_id)
    if group_by == "day":
        entries = entries.annotate(day=TruncDay("created_at"))
    rows = (
        entries.values(group=F(GROUPS[group_by]))
        .annotate(
            calls=Count("id", filter=Q(kind__in=[LedgerKind.CHARGE, LedgerKind.CACHED])),
            cached_calls=Count("id", filter=Q(kind=LedgerKind.CACHED)),
            input_tokens=Sum("input_tokens", filter=~Q(kind=LedgerKind.REFUND), default=0),
            output_tokens=Sum("output_tokens", filter=~Q(kind=LedgerKind.REFUND), default=0),
            cost_micros=Sum("cost_micros", filter=SPEND, default=0),
            saved_micros=Sum("saved_micros", default=0),
        )
        .order_by("group")
    )
    result = []
    for row in rows:
        values: dict[str, Any] = dict(row)
        key = values.pop("group")
        if group_by == "day":
            key = key.date().isoformat()
        result.append({group_by: key, **values, "cost_usd": format_usd(values["cost_micros"])})
    return result
