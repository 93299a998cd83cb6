"""Budgets that are never overshot: reservations at admission, settlement after
the call.

Admission reserves the request's worst-case cost (its input tokens counted with
tiktoken, plus `max_tokens` - or the model's output limit - at the output price)
against every budget that applies to the caller: the user's day and month (their
own, or their tier's default) and the tenant's day and month. One Lua script
checks `spent + reserved + amount <= limit` on all of them and, only if every one
passes, adds the amount to each one's `reserved`: atomic, so two hundred requests
racing for the last cent admit exactly as many as fit. Settlement replaces the
reservation with the actual cost (a running job that is cancelled or stopped is
charged what its call used); a failed job, or one cancelled before it ran,
releases it.

Three refusals, told apart by the script: the budget is used up (its *settled*
spend reached the limit: the hard limit, which switches the user or tenant off
until the period ends), the request is larger than what is left (402 naming the
`max_tokens` that would fit; a request that set none is held, and sent, with the
largest output that fits), or holds of requests in flight take the room
(`budget_busy`, a few seconds' Retry-After, nothing flipped).

Why Redis and not a row-locked Postgres UPDATE: every submission touches the same
tenant-wide counters, and a row lock would serialise a tenant's submissions behind
each other's transactions (and lengthen the submission, which is otherwise one
autocommitted INSERT). The script is one round trip and never waits on a lock.

Postgres stays the truth. The ledger (apps/billing/models.py) records every
charge; a budget counter (a Redis hash `spent`/`reserved` per scope and period,
tenant-tagged keys) is rebuilt from the ledger whenever it is missing (a new
period, or Redis lost its data), and expires two days after its period. The
reservation of each job is a record of its own (amount, counters, the time it was
made), so a hold made before midnight is settled into the period it was made in.
Settlement is exactly once and order-free: the first settle or release gives the
hold back and leaves a marker with what it added to `spent`; a later settle with a
larger actual cost (a cancelled job's worker, after the sweep released its hold)
adds only the difference, and a release after a settle changes nothing.

What a budget and its period are, and the keys, live in windows.py; the two
refusals in refusals.py; the alerts this module sends in alerts.py. The sweep that
repairs holds nothing settled reads the job table, so it is the job app's
(apps/jobs/holds.py), built on holds_list here.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from django.conf import settings
from django.db.models import Sum
from django.utils import timezone
from redis.commands.core import Script

from apps.accounts.selectors import Principal
from apps.controls.models import Period, TenantBudget, TierBudget
from apps.core.redis import redis_client
from apps.core.ttlcache import TTLCache
from apps.observability import metrics

from .alerts import alert_once
from .models import LedgerEntry, LedgerKind, UserBudget
from .money import format_usd, micros_from_usd
from .refusals import BudgetBusy, BudgetExceeded
from .windows import COUNTER_GRACE, Budget, Window, counter_key, period_window, reservation_key, settled_key

RESERVATION_TTL_SECONDS = 2 * 24 * 3600
# A settled job's marker (what it added to `spent`) only has to outlive the late
# settles it guards against: a cancelled job's worker (seconds), the settlement
# retries and the sweep (minutes).
SETTLED_TTL_SECONDS = 6 * 3600
SPEND_KINDS = (LedgerKind.CHARGE, LedgerKind.REFUND, LedgerKind.ADJUSTMENT)

# KEYS: the budget counters, then the reservation record.
# ARGV: amount, reservation TTL, the hold's time (epoch seconds), then one limit per counter.
# -> {1} reserved | {-1, i} counter i is missing | {verdict, i, spent, reserved} refused by
# counter i, the most severe verdict over all counters: 2 used up (spent >= limit),
# 3 larger than what is left (spent + amount > limit), 0 busy (the holds in flight
# take the room: spent + reserved + amount > limit).
_RESERVE = """
local amount = tonumber(ARGV[1])
local n = #KEYS - 1
if redis.call('EXISTS', KEYS[n + 1]) == 1 then return {1} end
local rank = {[1] = 0, [0] = 1, [3] = 2, [2] = 3}
local verdict, at, at_spent, at_reserved = 1, 0, 0, 0
for i = 1, n do
  local state = redis.call('HMGET', KEYS[i], 'spent', 'reserved')
  if not state[1] then return {-1, i} end
  local spent = tonumber(state[1])
  local reserved = tonumber(state[2] or '0')
  local limit = tonumber(ARGV[3 + i])
  local v = 1
  if amount > 0 and spent >= limit then v = 2
  elseif spent + amount > limit then v = 3
  elseif spent + reserved + amount > limit then v = 0 end
  if rank[v] > rank[verdict] then verdict, at, at_spent, at_reserved = v, i, spent, reserved end
end
if verdict ~= 1 then return {verdict, at, at_spent, at_reserved} end
for i = 1, n do redis.call('HINCRBY', KEYS[i], 'reserved', amount) end
redis.call('HSET', KEYS[n + 1], 'amount', amount, 'counters', table.concat(KEYS, ' ', 1, n), 'at', ARGV[3])
redis.call('EXPIRE', KEYS[n + 1], tonumber(ARGV[2]))
return {1}
"""
USED_UP, TOO_LARGE, BUSY = 2, 3, 0

# KEYS: the reservation record, the job's settlement marker. ARGV: the actual cost,
# the marker's TTL.
# The first settle (or release, at 0) moves the hold out of `reserved` and the
# actual cost into `spent`, and leaves the marker (what it added, the counters,
# the hold's time): -> 1. A later settle with a larger cost adds the difference
# (-> 2); anything else changes nothing (-> 0). The counters are named in the
# record, not in KEYS: they share the record's `{tenant}` hash tag, so they live in
# the same slot.
_SETTLE = """
local actual = tonumber(ARGV[1])
local record = redis.call('HMGET', KEYS[1], 'amount', 'counters', 'at')
if record[1] then
  local amount = tonumber(record[1])
  for counter in string.gmatch(record[2], '%S+') do
    if redis.call('EXISTS', counter) == 1 then
      redis.call('HINCRBY', counter, 'reserved', -amount)
      redis.call('HINCRBY', counter, 'spent', actual)
    end
  end
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[2], 'applied', actual, 'counters', record[2], 'at', record[3] or '')
  redis.call('EXPIRE', KEYS[2], tonumber(ARGV[2]))
  return 1
end
local marker = redis.call('HMGET', KEYS[2], 'applied', 'counters')
if not marker[1] or actual <= tonumber(marker[1]) then return 0 end
for counter in string.gmatch(marker[2], '%S+') do
  if redis.call('EXISTS', counter) == 1 then
    redis.call('HINCRBY', counter, 'spent', actual - tonumber(marker[1]))
  end
end
redis.call('HSET', KEYS[2], 'applied', actual)
return 2
"""


@functools.cache
def _script(source: str) -> Script:
    """A registered script (EVALSHA, loaded on first use), made once per process."""
    return redis_client().register_script(source)


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


Fit = Callable[[int], "tuple[int, int] | None"]


def budget_reserve(*, principal: Principal, job_id: uuid.UUID, amount_micros: int) -> int:
    """budget_hold's amount, for callers with nothing to fit (embeddings have no
    output allowance): the micro-dollars held, 0 when no budget applies."""
    return budget_hold(principal=principal, job_id=job_id, amount_micros=amount_micros).amount


@dataclass(frozen=True)
class Hold:
    amount: int  # micro-dollars held; 0: no budget applies
    max_tokens: int | None = None  # the output it was fitted to (adjusted requests only)


def budget_hold(
    *,
    principal: Principal,
    job_id: uuid.UUID,
    amount_micros: int,
    fit: Fit | None = None,
    adjust: bool = False,
    now: datetime | None = None,
) -> Hold:
    """Hold `amount_micros` against every budget of the caller. Idempotent per job.

    `fit(room)` is the largest request that fits `room` micro-dollars: (max_tokens,
    its worst case), or None. A request larger than what is left of a budget is
    refused naming that max_tokens; with `adjust` (the caller set no max_tokens)
    it is held at that size instead, and the Hold's `max_tokens` says what to send.
    Raises BudgetExceeded (used up, or too large) or BudgetBusy (in-flight holds
    take the room: try again soon)."""
    budgets = budgets_for(tenant_schema=principal.tenant_schema, user_id=principal.user_id, tier=principal.tier)
    if not budgets:
        return Hold(0)
    now = now or timezone.now()
    windows = [period_window(b.period, now) for b in budgets]
    schema = principal.tenant_schema
    keys = [
        counter_key(schema=schema, scope=b.scope, user_id=principal.user_id, window=w)
        for b, w in zip(budgets, windows, strict=True)
    ]
    keys.append(reservation_key(schema=schema, job_id=job_id))
    limits = [b.limit_micros for b in budgets]
    reserve = _script(_RESERVE)
    amount, fitted = amount_micros, None
    # Each pass hydrates a missing counter or shrinks the hold to a smaller room.
    for _ in range(2 * len(budgets) + 2):
        result: Sequence[int] = reserve(
            keys=keys, args=[amount, RESERVATION_TTL_SECONDS, f"{now.timestamp():.6f}", *limits]
        )
        if result[0] == 1:
            return Hold(amount, fitted)
        index = int(result[1]) - 1
        if result[0] == -1:
            _hydrate(keys[index], budgets[index], windows[index], principal)
            continue
        budget, window = budgets[index], windows[index]
        spent, reserved = int(result[2]), int(result[3])
        show = budget.scope == "user" or principal.is_admin
        fits = fit(budget.limit_micros - spent) if fit is not None and result[0] == TOO_LARGE else None
        if adjust and fits is not None and fits[1] < amount:
            fitted, amount = fits
            continue
        metrics.record_budget_rejection(budget.scope, budget.period, schema)
        if result[0] == BUSY:
            raise BudgetBusy(budget=budget, spent=spent, reserved=reserved, show_amounts=show)
        if result[0] == USED_UP:
            _hard_limit_reached(
                tenant_schema=schema, user_id=principal.user_id, email=principal.email, budget=budget, window=window,
                spent=spent,
            )  # fmt: skip
            raise BudgetExceeded(budget=budget, window=window, spent=spent, reserved=reserved, amount=amount,
                                 show_amounts=show)  # fmt: skip
        raise BudgetExceeded(
            budget=budget,
            window=window,
            spent=spent,
            reserved=reserved,
            amount=amount,
            used_up=False,
            fits_max_tokens=fits[0] if fits is not None else None,
            show_amounts=show,
        )
    raise RuntimeError("budget counters kept changing while reserving")  # pragma: no cover


def _hard_limit_reached(
    *, tenant_schema: str, user_id: int, email: str, budget: Budget, window: Window, spent: int
) -> None:
    """Settled spend reached the limit: alert once, and switch the user (or tenant)
    off until the period resets (reset_budgets clears automatic switches). Never a
    refusal's doing: holds in flight are not spend. An operator who turns that
    switch back off mid-period is not overruled: the alert, and with it the flip,
    happen once per period."""
    from apps.controls.models import SwitchLevel
    from apps.controls.switches import switch_set
    from apps.tenants.models import Tenant

    if not alert_once(
        schema=tenant_schema,
        budget=budget,
        window=window,
        kind="hard",
        spent=spent,
        user_id=user_id,
        user_email=email,
    ):
        return
    tenant = Tenant.objects.get(schema_name=tenant_schema)
    period = budget.period_word
    if budget.scope == "tenant":
        # Every user of the tenant reads this reason: no amounts.
        reason = f"The organisation's {period} budget is used up (hard limit); it resets at {window.resets}."
        switch_set(level=SwitchLevel.TENANT, tenant=tenant, active=True, actor="system:budget",
                   reason=reason, automatic=True, period=window.ident)  # fmt: skip
    else:
        reason = (
            f"Your {period} budget of {format_usd(budget.limit_micros)} is used up ({format_usd(spent)} spent,"
            f" hard limit); it resets at {window.resets}."
        )
        switch_set(level=SwitchLevel.USER, tenant=tenant, user_id=user_id, user_email=email,
                   active=True, actor="system:budget", reason=reason, automatic=True,
                   period=window.ident)  # fmt: skip


def budget_after_charge(*, tenant_schema: str, user_id: int, tier: str, email: str, at: datetime | None = None) -> None:
    """After a settlement (into the periods of `at`, the hold's time): alert once per
    period for each budget whose spend crossed its soft threshold, and reach the
    hard limit (switch off) for each whose settled spend reached its limit."""
    budgets = budgets_for(tenant_schema=tenant_schema, user_id=user_id, tier=tier)
    if not budgets:
        return
    now = at or timezone.now()
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
        if spent >= budget.limit_micros:
            _hard_limit_reached(
                tenant_schema=tenant_schema, user_id=user_id, email=email, budget=budget, window=window, spent=spent
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
    """Turn a job's reservation into its actual cost, exactly once (see _SETTLE):
    True when this call changed the counters."""
    settle = _script(_SETTLE)
    keys = [reservation_key(schema=schema, job_id=job_id), settled_key(schema=schema, job_id=job_id)]
    return bool(settle(keys=keys, args=[actual_micros, SETTLED_TTL_SECONDS]))


def budget_hold_time(*, schema: str, job_id: uuid.UUID) -> datetime | None:
    """When the job's hold was made (its periods), from the reservation or, once
    settled, its marker; None when no budget applied or both expired."""
    client = redis_client()
    for key in (reservation_key(schema=schema, job_id=job_id), settled_key(schema=schema, job_id=job_id)):
        raw = client.hget(key, "at")
        if raw:
            return datetime.fromtimestamp(float(raw), tz=UTC)
    return None


def holds_list(*, schema: str) -> Iterator[tuple[uuid.UUID, datetime | None]]:
    """Every hold of one tenant not settled yet: (job id, when it was made; None
    when it went meanwhile). For the repair sweep (apps/jobs/holds.py), which
    knows what became of each job: billing never reads the job table."""
    client = redis_client()
    for raw in client.scan_iter(match=reservation_key(schema=schema, job_id="*"), count=500):
        key = raw.decode() if isinstance(raw, bytes) else raw
        at = client.hget(key, "at")
        yield uuid.UUID(key.rsplit(":", 1)[1]), datetime.fromtimestamp(float(at), tz=UTC) if at else None


def budget_release(*, schema: str, job_id: uuid.UUID) -> bool:
    """Give a job's reservation back (failed, cancelled, or never stored)."""
    return budget_settle(schema=schema, job_id=job_id, actual_micros=0)
