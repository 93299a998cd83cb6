"""Cache counters per tenant, in Redis (atomic across processes): hits and misses
by kind, single-flight followers, and the semantic lookups' total latency. Per UTC
day (read by the usage API; kept 35 days) and since the start (`:total`, never
reset: the Prometheus counters at /metrics)."""

from __future__ import annotations

import logging
from datetime import date, timedelta

import redis
from django.utils import timezone

from apps.core.redis import redis_client

logger = logging.getLogger(__name__)

TTL_SECONDS = 35 * 24 * 3600
FIELDS = ("exact_hit", "exact_miss", "semantic_hit", "semantic_miss", "flight_follower")


def stats_key(schema: str, day: date | None = None) -> str:
    return f"aip:{{{schema}}}:cache:stats:{(day or timezone.now().date()):%Y%m%d}"


def total_key(schema: str) -> str:
    return f"aip:{{{schema}}}:cache:stats:total"


def cache_count(*, schema: str, field: str, lookup_ms: float | None = None) -> None:
    """Count one event (best effort: a Redis error is logged, never raised)."""
    key = stats_key(schema)
    try:
        pipe = redis_client().pipeline(transaction=False)
        for target in (key, total_key(schema)):
            pipe.hincrby(target, field, 1)
            if lookup_ms is not None:
                pipe.hincrbyfloat(target, "semantic_lookup_ms_total", lookup_ms)
        pipe.expire(key, TTL_SECONDS)
        pipe.execute()
    except redis.RedisError as exc:
        logger.warning("cache counter %s not recorded: %s", field, exc)


def cache_totals(*, schema: str) -> dict[str, float]:
    """The tenant's counters since the start."""
    raw: dict[bytes, bytes] = redis_client().hgetall(total_key(schema))  # type: ignore[assignment]
    return {name.decode(): float(value) for name, value in raw.items()}


def cache_stats(*, schema: str, since: date) -> dict[str, float]:
    """The tenant's counters summed from `since` to today, with the semantic
    lookups' mean latency."""
    today = timezone.now().date()
    days = [since + timedelta(days=n) for n in range((today - since).days + 1)][-40:]
    pipe = redis_client().pipeline(transaction=False)
    for day in days:
        pipe.hgetall(stats_key(schema, day))
    totals: dict[str, float] = dict.fromkeys(FIELDS, 0)
    lookup_ms = 0.0
    for row in pipe.execute():
        for name, value in row.items():
            field = name.decode()
            if field == "semantic_lookup_ms_total":
                lookup_ms += float(value)
            elif field in totals:
                totals[field] += int(value)
    lookups = totals["semantic_hit"] + totals["semantic_miss"]
    totals["semantic_lookup_ms_mean"] = round(lookup_ms / lookups, 3) if lookups else 0.0
    return totals
