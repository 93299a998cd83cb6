"""Budgets that are never overshot: reservations at admission, settlement after
the call.

Admission reserves the request's worst-case cost (its input tokens counted with
tiktoken, plus `max_tokens` - or the model's output limit - at the output price)
against every budget that applies to the caller: the user's day and month (their
own, or their tier's default) and the tenant's day and month. One Lua script
checks `spent + reserved + amount <= limit` on all of them and, only if every one
passes, adds the amount to each one's `reserved`: atomic, so two hundred requests
racing for the last cent admit exactly as many as fit. Settlement replaces the
reservation with the actual cost; a failed or cancelled job releases it.

Why Redis and not a row-locked Postgres UPDATE: every submission touches the same
tenant-wide counters, and a row lock would serialise a tenant's submissions behind
each other's transactions (and lengthen the submission, which is otherwise one
autocommitted INSERT). The script is one round trip and never waits on a lock.

Postgres stays the truth. The ledger (apps/billing/models.py) records every
charge; a budget counter (a Redis hash `spent`/`reserved` per scope and period,
tenant-tagged keys) is rebuilt from the ledger whenever it is missing (a new
period, or Redis lost its data), and expires two days after its period. The
reservation of each job is a record of its own (amount and counters), so
settling twice changes nothing.
"""

from __future__ import annotations

import functools
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.db.models import Sum
from django.utils import timezone
from redis.commands.core import Script
from rest_framework import status

from apps.accounts.selectors import Principal
from apps.controls.models import Period, TenantBudget, TierBudget
from apps.core.errors import ApiError
from apps.core.redis import redis_client
from apps.core.ttlcache import TTLCache
from apps.observability import metrics

from .models import LedgerEntry, LedgerKind, UserBudget
from .money import format_usd, micros_from_usd

RESERVATION_TTL_SECONDS = 2 * 24 * 3600
COUNTER_GRACE = timedelta(days=2)  # counters outlive their period (late settlements land in it)
SPEND_KINDS = (LedgerKind.CHARGE, LedgerKind.REFUND, LedgerKind.ADJUSTMENT)

# KEYS: the budget counters, then the reservation record.
# ARGV: amount, reservation TTL, then one limit per counter.
# -> {1} reserved | {0, i, spent, reserved} counter i would overflow | {-1, i} counter i is missing
_RESERVE = """
local amount = tonumber(ARGV[1])
local n = #KEYS - 1
if redis.call('EXISTS', KEYS[n + 1]) == 1 then return {1} end
for i = 1, n do
  local state = redis.call('HMGET', KEYS[i], 'spent', 'reserved')
  if not state[1] then return {-1, i} end
  local spent = tonumber(state[1])
  local reserved = tonumber(state[2] or '0')
  if spent + reserved + amount > tonumber(ARGV[2 + i]) then return {0, i, spent, reserved} end
end
for i = 1, n do redis.call('HINCRBY', KEYS[i], 'reserved', amount) end
redis.call('HSET', KEYS[n + 1], 'amount', amount, 'counters', table.concat(KEYS, ' ', 1, n),
           'at', redis.call('TIME')[1])
redis.call('EXPIRE', KEYS[n + 1], tonumber(ARGV[2]))
return {1}
"""

# KEYS: the reservation record. ARGV: the actual cost.
# Moves the reservation into `spent` as the actual cost, once: -> 1, or 0 when
# there is no reservation (already settled or released, or never made).
# The counters are named in the record, not in KEYS: they share the record's
# `{tenant}` hash tag, so they live in the same slot.
_SETTLE = """
local record = redis.call('HMGET', KEYS[1], 'amount', 'counters')
if not record[1] then return 0 end
local amount = tonumber(record[1])
local actual = tonumber(ARGV[1])
for counter in string.gmatch(record[2], '%S+') do
  if redis.call('EXISTS', counter) == 1 then
    redis.call('HINCRBY', counter, 'reserved', -amount)
    redis.call('HINCRBY', counter, 'spent', actual)
  end
end
redis.call('DEL', KEYS[1])
return 1
"""


@functools.cache
def _script(source: str) -> Script:
    """A registered script (EVALSHA, loaded on first use), made once per process."""
    return redis_client().register_script(source)


@dataclass(frozen=True)
class Budget:
    scope: str  # "user" or "tenant"
    period: str  # Period value
    limit_micros: int
    soft_percent: int
    source: str  # "user", "tier:<tier>" or "tenant": where the limit was set


@dataclass(frozen=True)
class Window:
    start: datetime
    end: datetime
    ident: str  # d20261127, m202611


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


class BudgetExceeded(ApiError):
    status_code = status.HTTP_402_PAYMENT_REQUIRED
    code = "budget_exceeded"

    def __init__(self, *, budget: Budget, window: Window, spent: int, reserved: int, amount: int) -> None:
        whose = "Your" if budget.scope == "user" else "Your organisation's"
        period = "daily" if budget.period == Period.DAY else "monthly"
        super().__init__(
            f"{whose} {period} budget of {format_usd(budget.limit_micros)} would be exceeded: "
            f"{format_usd(spent)} spent and {format_usd(reserved)} held for requests in flight, and this "
            f"request may cost up to {format_usd(amount)}. The budget resets at "
            f"{window.end.strftime('%Y-%m-%dT%H:%M:%SZ')}.",
            headers={"Retry-After": str(max(1, int((window.end - timezone.now()).total_seconds())))},
        )
        self.budget = budget
        self.window = window


_budget_cache: TTLCache[tuple[Budget, ...]] = TTLCache()


def budget_cache_clear() -> None:
    _budget_cache.clear()


def budgets_for(*, tenant_schema: str, user_id: int, tier: str) -> tuple[Budget, ...]:
    """The budgets that apply to a caller: per period, the user's own (else their
    tier's default), and the tenant's. Cached for BUDGET_CACHE_SECONDS."""

    def load() -> tuple[Budget, ...]:
        found: list[Budget] = []
        own = {b.period: b for b in UserBudget.objects.filter(user_id=user_id)}
        tier_defaults = {b.period: b for b in TierBudget.objects.filter(tier=tier)}
        for period in Period.values:
            if period in own:
                row: Any = own[period]
                source = "user"
            elif period in tier_defaults:
                row, source = tier_defaults[period], f"tier:{tier}"
            else:
                continue
            found.append(Budget("user", period, micros_from_usd(row.limit_usd), row.soft_percent, source))
        for row in TenantBudget.objects.filter(tenant__schema_name=tenant_schema):
            found.append(Budget("tenant", row.period, micros_from_usd(row.limit_usd), row.soft_percent, "tenant"))
        return tuple(found)

    return _budget_cache.get_or_load((tenant_schema, user_id, tier), settings.BUDGET_CACHE_SECONDS, load)


def budget_reserve(*, principal: Principal, job_id: uuid.UUID, amount_micros: int) -> bool:
    """Hold `amount_micros` against every budget of the caller, or raise
    BudgetExceeded naming the first that cannot take it. False when no budget
    applies (nothing is held). Idempotent per job."""
    budgets = budgets_for(tenant_schema=principal.tenant_schema, user_id=principal.user_id, tier=principal.tier)
    if not budgets:
        return False
    now = timezone.now()
    windows = [period_window(b.period, now) for b in budgets]
    schema = principal.tenant_schema
    keys = [
        counter_key(schema=schema, scope=b.scope, user_id=principal.user_id, window=w)
        for b, w in zip(budgets, windows, strict=True)
    ]
    keys.append(reservation_key(schema=schema, job_id=job_id))
    limits = [b.limit_micros for b in budgets]
    reserve = _script(_RESERVE)
    for _ in range(len(budgets) + 1):
        result: Sequence[int] = reserve(keys=keys, args=[amount_micros, RESERVATION_TTL_SECONDS, *limits])
        if result[0] == 1:
            return True
        index = int(result[1]) - 1
        if result[0] == -1:
            _hydrate(keys[index], budgets[index], windows[index], principal)
            continue
        refused = BudgetExceeded(
            budget=budgets[index],
            window=windows[index],
            spent=int(result[2]),
            reserved=int(result[3]),
            amount=amount_micros,
        )
        _hard_limit_reached(principal, budgets[index], windows[index], spent=int(result[2]), refused=refused)
        metrics.record_budget_rejection(budgets[index].scope, budgets[index].period, schema)
        raise refused
    raise RuntimeError("budget counters kept disappearing while reserving")  # pragma: no cover


def _hard_limit_reached(
    principal: Principal, budget: Budget, window: Window, *, spent: int, refused: BudgetExceeded
) -> None:
    """The first refusal of a period is the hard limit reached: alert once, and
    switch the user (or tenant) off until the period resets (reset_budgets clears
    automatic switches). An operator who turns that switch back off mid-period is
    not overruled: the alert, and with it the flip, happen once per period."""
    from apps.controls.models import SwitchLevel
    from apps.controls.switches import switch_set
    from apps.tenants.models import Tenant

    from .alerts import alert_once

    if not alert_once(
        schema=principal.tenant_schema,
        budget=budget,
        window=window,
        kind="hard",
        spent=spent,
        user_id=principal.user_id,
        user_email=principal.email,
    ):
        return
    tenant = Tenant.objects.get(schema_name=principal.tenant_schema)
    if budget.scope == "tenant":
        switch_set(level=SwitchLevel.TENANT, tenant=tenant, active=True, actor="system:budget",
                   reason=refused.message, automatic=True, period=window.ident)  # fmt: skip
    else:
        switch_set(level=SwitchLevel.USER, tenant=tenant, user_id=principal.user_id, user_email=principal.email,
                   active=True, actor="system:budget", reason=refused.message, automatic=True,
                   period=window.ident)  # fmt: skip


def budget_after_charge(*, tenant_schema: str, user_id: int, tier: str, email: str) -> None:
    """After a settlement: alert once per period for each budget whose spend crossed
    its soft threshold."""
    from .alerts import alert_once

    budgets = budgets_for(tenant_schema=tenant_schema, user_id=user_id, tier=tier)
    if not budgets:
        return
    now = timezone.now()
    windows = [period_window(b.period, now) for b in budgets]
    pipe = redis_client().pipeline(transaction=False)
    for budget, window in zip(budgets, windows, strict=True):
        pipe.hget(counter_key(schema=tenant_schema, scope=budget.scope, user_id=user_id, window=window), "spent")
    for budget, window, raw in zip(budgets, windows, pipe.execute(), strict=True):
        spent = int(raw or 0)
        if spent * 100 >= budget.limit_micros * budget.soft_percent:
            alert_once(
                schema=tenant_schema,
                budget=budget,
                window=window,
                kind="soft",
                spent=spent,
                user_id=user_id,
                user_email=email,
            )


def _hydrate(key: str, budget: Budget, window: Window, principal: Principal) -> None:
    """Create a missing counter from the ledger: what this scope spent in the period
    so far. Concurrent hydrations compute the same sum; the first one wins."""
    entries = LedgerEntry.objects.filter(created_at__gte=window.start, created_at__lt=window.end, kind__in=SPEND_KINDS)
    if budget.scope == "user":
        entries = entries.filter(user_id=principal.user_id)
    spent = entries.aggregate(total=Sum("cost_micros"))["total"] or 0
    client = redis_client()
    pipe = client.pipeline(transaction=True)
    pipe.hsetnx(key, "spent", spent)
    pipe.hsetnx(key, "reserved", 0)
    pipe.expireat(key, window.end + COUNTER_GRACE)
    pipe.execute()


def budget_settle(*, schema: str, job_id: uuid.UUID, actual_micros: int) -> bool:
    """Turn a job's reservation into its actual cost (once)."""
    settle = _script(_SETTLE)
    return bool(settle(keys=[reservation_key(schema=schema, job_id=job_id)], args=[actual_micros]))


def reservations_sweep(*, schema: str, stale_after_seconds: int = 600) -> dict[str, int]:
    """Repair holds that nothing will settle, in one tenant (beat, every few
    minutes): a job that ended without settling (its worker died, the sweeper
    failed it) gets its charge, or nothing, settled; a hold whose job was never
    stored (the web process died between the two) is released once it is older
    than `stale_after_seconds`. Jobs still queued or running keep theirs."""
    from apps.jobs.models import FINAL_STATUSES, Job

    client = redis_client()
    now = time.time()
    settled = released = 0
    for raw in client.scan_iter(match=f"aip:{{{schema}}}:resv:*", count=500):
        key = raw.decode() if isinstance(raw, bytes) else raw
        job_id = key.rsplit(":", 1)[1]
        job = Job.objects.filter(pk=job_id).values("status", "cost_micros").first()
        if job is None:
            at = client.hget(key, "at")
            if at is not None and now - float(at) > stale_after_seconds:
                released += budget_release(schema=schema, job_id=uuid.UUID(job_id))
        elif job["status"] in FINAL_STATUSES:
            settled += budget_settle(schema=schema, job_id=uuid.UUID(job_id), actual_micros=job["cost_micros"] or 0)
    return {"settled": settled, "released": released}


def budget_release(*, schema: str, job_id: uuid.UUID) -> bool:
    """Give a job's reservation back (failed, cancelled, or never stored)."""
    return budget_settle(schema=schema, job_id=job_id, actual_micros=0)
