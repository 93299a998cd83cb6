"""What a budget is and where its numbers live: the Budget (a limit on a scope
and period), the Window of time a period covers (UTC days and months), and the
Redis keys of its counters, of each job's hold and of each job's settlement
marker. Reservation (budgets.py), alerts (alerts.py) and closing periods
(periods.py) all read these; this module imports none of them."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from django.utils import timezone

from apps.controls.models import Period

COUNTER_GRACE = timedelta(days=2)  # counters outlive their period (late settlements land in it)


@dataclass(frozen=True)
class Budget:
    scope: str  # "user" or "tenant"
    period: str  # Period value
    limit_micros: int
    soft_percent: int
    source: str  # "user", "tier:<tier>" or "tenant": where the limit was set

    @property
    def period_word(self) -> str:
        """The period as messages name it."""
        return "daily" if self.period == Period.DAY else "monthly"


@dataclass(frozen=True)
class Window:
    start: datetime
    end: datetime
    ident: str  # d20261127, m202611

    @property
    def resets(self) -> str:
        """When the period ends, as messages show it."""
        return self.end.strftime("%Y-%m-%dT%H:%M:%SZ")


def period_window(period: str, now: datetime | None = None) -> Window:
    now = (now or timezone.now()).astimezone(UTC)
    if period == Period.DAY:
        start = now.replace(hour=0, minute=0, second=0, microsecond=0)
        return Window(start, start + timedelta(days=1), start.strftime("d%Y%m%d"))
    start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    end = (start + timedelta(days=32)).replace(day=1)
    return Window(start, end, start.strftime("m%Y%m"))


def counter_key(*, schema: str, scope: str, user_id: int, window: Window) -> str:
    who = "tenant" if scope == "tenant" else f"user:{user_id}"
    return f"aip:{{{schema}}}:budget:{who}:{window.ident}"


def reservation_key(*, schema: str, job_id: uuid.UUID | str) -> str:
    return f"aip:{{{schema}}}:resv:{job_id}"


def settled_key(*, schema: str, job_id: uuid.UUID | str) -> str:
    return f"aip:{{{schema}}}:settled:{job_id}"
