"""The flags as the platform evaluates them: platform flags (public schema) and
the tenant's own (its schema; same key overrides), cached per process for
FLAG_CACHE_SECONDS and reloaded early when a save bumped the Redis version
(every web and worker process sees a change within that time)."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import redis
from django.conf import settings
from django.db import connection
from django.utils import timezone

from apps.core.redis import redis_client

from .models import Flag
from .rollout import FlagRule, Subject, concerns, concerns_tenant, evaluate

logger = logging.getLogger(__name__)

VERSION_KEY = "aip:flags:version"


def _rule(row: Flag, scope: str) -> FlagRule:
    return FlagRule(
        key=row.key,
        enabled=row.enabled,
        rollout_percent=row.rollout_percent,
        model=row.model,
        rollout_model=row.rollout_model,
        bucket_by=row.bucket_by,
        allow_users=frozenset(str(e).lower() for e in row.allow_users),
        deny_users=frozenset(str(e).lower() for e in row.deny_users),
        allow_tenants=frozenset(map(str, row.allow_tenants)),
        deny_tenants=frozenset(map(str, row.deny_tenants)),
        tier=row.tier,
        starts_at=row.starts_at,
        ends_at=row.ends_at,
        scope=scope,
    )


def _load(schema: str) -> tuple[FlagRule, ...]:
    # Schema-qualified: the table exists in both schemas, and the search path of a
    # tenant request would find only the tenant's.
    platform = {row.key: _rule(row, "platform") for row in Flag.objects.raw("SELECT * FROM public.flags_flag")}
    own = {row.key: _rule(row, "tenant") for row in Flag.objects.raw(f'SELECT * FROM "{schema}".flags_flag')}
    return tuple(sorted({**platform, **own}.values(), key=lambda rule: rule.key))


@dataclass
class _Entry:
    checked: float
    version: int
    rules: tuple[FlagRule, ...]
    loaded: float = 0.0


_entries: dict[str, _Entry] = {}
_lock = threading.Lock()


def _version() -> int | None:
    try:
        return int(redis_client().get(VERSION_KEY) or 0)
    except redis.RedisError as exc:
        logger.warning("flag version unavailable, keeping cached flags: %s", exc)
        return None


# Reloaded at least this often whatever the version says: a change whose version
# bump was lost (Redis unreachable at that moment) still arrives.
MAX_AGE_SECONDS = 60.0


def flag_rules(schema: str) -> tuple[FlagRule, ...]:
    now = time.monotonic()
    entry = _entries.get(schema)
    if entry is not None and now - entry.checked < settings.FLAG_CACHE_SECONDS:
        return entry.rules
    version = _version()
    fresh = entry is not None and now - entry.loaded < MAX_AGE_SECONDS
    if entry is not None and fresh and (version is None or version == entry.version):
        entry.checked = now
        return entry.rules
    rules = _load(schema)
    with _lock:
        _entries[schema] = _Entry(now, version or 0, rules, now)
    return rules


def flags_cache_clear() -> None:
    _entries.clear()


@dataclass(frozen=True)
class Evaluated:
    rule: FlagRule
    on: bool

    @property
    def model(self) -> str:
        return self.rule.rollout_model if self.on else self.rule.model


def flags_evaluate(subject: Subject, *, tenant_view: bool = False) -> list[Evaluated]:
    """The flags that concern this user (see rollout.concerns), evaluated for them;
    with `tenant_view`, those that concern any of the tenant's users."""
    now = timezone.now()
    concerned = (
        (lambda rule: concerns_tenant(rule, subject.tenant_schema, now))
        if tenant_view
        else (lambda rule: concerns(rule, subject, now))
    )
    return [
        Evaluated(rule, evaluate(rule, subject, now)) for rule in flag_rules(subject.tenant_schema) if concerned(rule)
    ]


def flags_route(subject: Subject, model: str) -> tuple[str, dict[str, str]]:
    """The model a request for `model` goes to, and every flag that decided it
    ({key: "on" | "off"}); the first flag (by key) that is on wins, and a later
    one that was on too is recorded "off": the job is not in its cohort. Only
    flags that concern the user are evaluated (and so recorded on the job)."""
    decided: dict[str, str] = {}
    routed = model
    for item in flags_evaluate(subject):
        if item.rule.model != model:
            continue
        wins = item.on and routed == model
        decided[item.rule.key] = "on" if wins else "off"
        if wins:
            routed = item.rule.rollout_model
    return routed, decided


def flag_cohorts(*, key: str, since: datetime) -> list[dict[str, Any]]:
    """The jobs a flag decided since `since`, side by side per variant and model
    (in the current tenant schema): how many, how they ended, provider latency
    (p50, p95) and cost, so the cohorts can be compared."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT flags->>%s, model, count(*),"
            " count(*) FILTER (WHERE status = 'succeeded'), count(*) FILTER (WHERE status = 'failed'),"
            " percentile_cont(0.5) WITHIN GROUP (ORDER BY provider_latency_ms),"
            " percentile_cont(0.95) WITHIN GROUP (ORDER BY provider_latency_ms),"
            " coalesce(sum(cost_micros), 0)"
            " FROM jobs_job WHERE flags ? %s AND created_at >= %s GROUP BY 1, 2 ORDER BY 1, 2",
            [key, key, since],
        )
        rows = cursor.fetchall()
    return [
        {
            "variant": variant,
            "model": model,
            "jobs": jobs,
            "succeeded": succeeded,
            "failed": failed,
            "error_rate": round(failed / jobs, 4) if jobs else 0.0,
            "latency_p50_ms": None if p50 is None else round(p50, 1),
            "latency_p95_ms": None if p95 is None else round(p95, 1),
            "cost_micros": int(cost),
        }
        for variant, model, jobs, succeeded, failed, p50, p95, cost in rows
    ]
