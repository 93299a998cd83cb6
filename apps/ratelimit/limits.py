"""Which token buckets a request pays into, and admission against them."""

from __future__ import annotations

import logging

import redis
from django.conf import settings
from rest_framework import status

from apps.catalog.selectors import ModelSpec
from apps.controls.models import RateLimit
from apps.core.errors import ApiError, PayloadTooLarge, ServiceUnavailable
from apps.core.ttlcache import TTLCache

from .buckets import Bucket, Decision, buckets_adjust, buckets_take
from .models import UserRateLimit

logger = logging.getLogger(__name__)

_cache: TTLCache[tuple[Bucket, ...]] = TTLCache()


def limits_cache_clear() -> None:
    _cache.clear()


def _bucket(key: str, name: str, tokens_per_minute: int, burst: int | None) -> Bucket:
    return Bucket(key, float(burst or tokens_per_minute), tokens_per_minute / 60, name)


def buckets_for(*, tenant_schema: str, user_id: int, tier: str, spec: ModelSpec) -> tuple[Bucket, ...]:
    """The user's bucket (their own limit, else their tier's), the tenant's, and the
    model's (its provider TPM, shared by all tenants); those that are configured.
    Cached for RATE_LIMIT_CACHE_SECONDS: a changed limit applies within it."""

    def load() -> tuple[Bucket, ...]:
        found: list[Bucket] = []
        own = UserRateLimit.objects.filter(user_id=user_id).first()
        user_limit: UserRateLimit | RateLimit | None = own or RateLimit.objects.filter(tier=tier).first()
        if user_limit is not None:
            name = "your token rate limit" if own else f"the {tier} tier's token rate limit"
            key = f"aip:{{{tenant_schema}}}:rl:user:{user_id}"
            found.append(_bucket(key, name, user_limit.tokens_per_minute, user_limit.burst_tokens))
        tenant_limit = RateLimit.objects.filter(tenant__schema_name=tenant_schema).first()
        if tenant_limit is not None:
            key = f"aip:{{{tenant_schema}}}:rl:tenant"
            name = "your organisation's token rate limit"
            found.append(_bucket(key, name, tenant_limit.tokens_per_minute, tenant_limit.burst_tokens))
        if spec.tokens_per_minute:
            key = f"aip:rl:model:{spec.slug}"
            found.append(_bucket(key, f"model {spec.slug}'s token rate limit", spec.tokens_per_minute, None))
        return tuple(found)

    return _cache.get_or_load((tenant_schema, user_id, tier, spec.slug), settings.RATE_LIMIT_CACHE_SECONDS, load)


class RateLimited(ApiError):
    status_code = status.HTTP_429_TOO_MANY_REQUESTS
    error_type = "rate_limit_error"
    code = "rate_limit_exceeded"

    def __init__(self, decision: Decision, tokens: int) -> None:
        bucket = decision.bucket
        super().__init__(
            f"Rate limit reached: {bucket.name} ({round(bucket.per_second * 60)} tokens/min, burst"
            f" {round(bucket.capacity)}) cannot take this request's {tokens} tokens now; retry in"
            f" {decision.retry_after_header} s.",
            headers={"Retry-After": decision.retry_after_header},
        )


def ratelimit_admit(buckets: tuple[Bucket, ...], tokens: int) -> None:
    """Debit the request's estimated tokens from all its buckets, or raise:
    RateLimited (429, Retry-After), PayloadTooLarge when no wait would ever let it
    pass, ServiceUnavailable when Redis cannot be asked (fail closed)."""
    if not buckets:
        return
    try:
        decision = buckets_take(buckets, tokens)
    except redis.RedisError as exc:
        logger.error("rate limiter unavailable, refusing LLM admission: %s", exc)
        raise ServiceUnavailable(
            "The rate limiter is unavailable; try again shortly.", code="ratelimit_unavailable"
        ) from exc
    if decision.never:
        raise PayloadTooLarge(
            f"This request may use {tokens} tokens (prompt + max_tokens), more than {decision.bucket.name} lets"
            f" through at once ({round(decision.bucket.capacity)} tokens): it can never pass. Lower max_tokens"
            " or shorten the prompt.",
            code="rate_limit_too_large",
            param="max_tokens",
        )
    if not decision.admitted:
        raise RateLimited(decision, tokens)


def ratelimit_reconcile(buckets: tuple[Bucket, ...], *, estimated: int, used: int) -> None:
    """After the call: give back what the estimate held beyond what was used (or
    take the excess). Best effort: a Redis error here only makes the limit stricter."""
    try:
        buckets_adjust(buckets, estimated - used)
    except redis.RedisError as exc:
        logger.warning("rate limit reconciliation skipped: %s", exc)
