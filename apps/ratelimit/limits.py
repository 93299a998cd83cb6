"""Which buckets a request pays into, admission against them, and what the
caller is told about them (OpenAI's `x-ratelimit-*` headers)."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import redis
from django.conf import settings
from rest_framework import status

from apps.accounts.selectors import Principal
from apps.catalog.selectors import ModelSpec
from apps.controls.models import RateLimit
from apps.core.errors import ApiError, PayloadTooLarge, ServiceUnavailable
from apps.core.ttlcache import TTLCache
from apps.observability import metrics
from apps.tenants.db import current_schema

from .buckets import Bucket, Decision, Unit, buckets_adjust, buckets_peek, buckets_take
from .models import UserRateLimit

logger = logging.getLogger(__name__)

_cache: TTLCache[tuple[Bucket, ...]] = TTLCache()


def limits_cache_clear() -> None:
    _cache.clear()


def _buckets(
    key: str, name: str, *, tokens_per_minute: int | None, burst: int | None, requests_per_minute: int | None
) -> list[Bucket]:
    found = []
    if tokens_per_minute:
        capacity = float(burst or tokens_per_minute)
        found.append(Bucket(key, capacity, tokens_per_minute / 60, f"{name} token rate limit"))
    if requests_per_minute:
        capacity, rate = float(requests_per_minute), requests_per_minute / 60
        found.append(Bucket(f"{key}:req", capacity, rate, f"{name} request rate limit", Unit.REQUESTS))
    return found


def buckets_for(*, tenant_schema: str, user_id: int, tier: str, spec: ModelSpec | None) -> tuple[Bucket, ...]:
    """The user's buckets (their own limit, else their tier's), the tenant's, and
    the model's (its provider TPM/RPM, shared by all tenants); those configured.
    Without a model, the user's and the tenant's. Cached for
    RATE_LIMIT_CACHE_SECONDS: a changed limit applies within it."""

    def load() -> tuple[Bucket, ...]:
        found: list[Bucket] = []
        own = UserRateLimit.objects.filter(user_id=user_id).first()
        user_limit: UserRateLimit | RateLimit | None = own or RateLimit.objects.filter(tier=tier).first()
        if user_limit is not None:
            found += _buckets(
                f"aip:{{{tenant_schema}}}:rl:user:{user_id}",
                "your" if own else f"the {tier} tier's",
                tokens_per_minute=user_limit.tokens_per_minute,
                burst=user_limit.burst_tokens,
                requests_per_minute=user_limit.requests_per_minute,
            )
        tenant_limit = RateLimit.objects.filter(tenant__schema_name=tenant_schema).first()
        if tenant_limit is not None:
            found += _buckets(
                f"aip:{{{tenant_schema}}}:rl:tenant",
                "your organisation's",
                tokens_per_minute=tenant_limit.tokens_per_minute,
                burst=tenant_limit.burst_tokens,
                requests_per_minute=tenant_limit.requests_per_minute,
            )
        if spec is not None:
            found += _buckets(
                f"aip:rl:model:{spec.slug}",
                f"model {spec.slug}'s",
                tokens_per_minute=spec.tokens_per_minute,
                burst=None,
                requests_per_minute=spec.requests_per_minute,
            )
        return tuple(found)

    cache_key = (tenant_schema, user_id, tier, spec.slug if spec else "")
    return _cache.get_or_load(cache_key, settings.RATE_LIMIT_CACHE_SECONDS, load)


def _costs(buckets: tuple[Bucket, ...], tokens: float) -> list[float]:
    return [tokens if b.unit is Unit.TOKENS else 1 for b in buckets]


def _duration(seconds: float) -> str:
    """OpenAI's reset format: "250ms", "6s", "1m30.5s"."""
    if seconds < 1:
        return f"{math.ceil(seconds * 1000)}ms"
    minutes, rest = divmod(math.ceil(seconds * 1000) / 1000, 60)
    text = f"{rest:.3f}".rstrip("0").rstrip(".") + "s"
    return f"{int(minutes)}m{text}" if minutes else text


@dataclass(frozen=True)
class RateLimitState:
    """The caller's buckets and their levels: the source of the `x-ratelimit-*`
    headers, for the tightest bucket of each unit (the fewest left)."""

    buckets: tuple[Bucket, ...]
    levels: tuple[float, ...]

    def headers(self) -> dict[str, str]:
        headers: dict[str, str] = {}
        for unit in Unit:
            held = [(level, b) for b, level in zip(self.buckets, self.levels, strict=True) if b.unit is unit]
            if not held:
                continue
            level, bucket = min(held, key=lambda pair: pair[0])
            headers[f"x-ratelimit-limit-{unit}"] = str(round(bucket.capacity))
            headers[f"x-ratelimit-remaining-{unit}"] = str(max(0, math.floor(level)))
            headers[f"x-ratelimit-reset-{unit}"] = _duration(bucket.seconds_to_full(level))
        return headers


class RateLimited(ApiError):
    status_code = status.HTTP_429_TOO_MANY_REQUESTS
    error_type = "rate_limit_error"
    code = "rate_limit_exceeded"

    def __init__(self, decision: Decision, buckets: tuple[Bucket, ...], tokens: int) -> None:
        bucket = decision.bucket
        assert bucket is not None
        per_minute = round(bucket.per_second * 60)
        if bucket.unit is Unit.TOKENS:
            burst = round(bucket.capacity)
            what = f"{per_minute} tokens/min, burst {burst}) cannot take this request's {tokens} tokens"
        else:
            what = f"{per_minute} requests/min) cannot take another request"
        super().__init__(
            f"Rate limit reached: {bucket.name} ({what} now; retry in {decision.retry_after_header} s.",
            headers={
                "Retry-After": decision.retry_after_header,
                **RateLimitState(buckets, decision.levels).headers(),
            },
        )


def bucket_label(bucket: Bucket) -> str:
    """A bucket's kind for metrics: user, tenant or model; tokens or requests."""
    scope = next((name for name in ("user", "tenant", "model") if f":rl:{name}" in bucket.key), "other")
    return f"{scope}_{bucket.unit.value}"


def ratelimit_admit(buckets: tuple[Bucket, ...], tokens: int, *, fail_open: bool = False) -> RateLimitState | None:
    """Debit the request (its estimated tokens, and one request where requests
    are limited) from all its buckets, or raise: RateLimited (429, Retry-After),
    PayloadTooLarge when no wait would ever let it pass, ServiceUnavailable when
    Redis cannot be asked (fail closed), unless `fail_open` (the tenant's choice):
    then the request passes unlimited. None when no bucket applies or it failed open."""
    if not buckets:
        return None
    try:
        decision = buckets_take(buckets, _costs(buckets, tokens))
    except redis.RedisError as exc:
        if fail_open:
            metrics.record_ratelimit_unavailable("fail_open")
            logger.warning(
                "rate limiter unavailable, admitting without limits (tenant fails open): %s",
                exc,
                extra={"event": "ratelimit_unavailable", "outcome": "fail_open"},
            )
            return None
        metrics.record_ratelimit_unavailable("fail_closed")
        logger.error(
            "rate limiter unavailable, refusing LLM admission: %s",
            exc,
            extra={"event": "ratelimit_unavailable", "outcome": "fail_closed"},
        )
        raise ServiceUnavailable(
            "The rate limiter is unavailable; try again shortly.", code="ratelimit_unavailable"
        ) from exc
    if decision.never:
        assert decision.bucket is not None
        raise PayloadTooLarge(
            f"This request may use {tokens} tokens (prompt + max_tokens), more than {decision.bucket.name} lets"
            f" through at once ({round(decision.bucket.capacity)} tokens): it can never pass. Lower max_tokens"
            " or shorten the prompt.",
            code="rate_limit_too_large",
            param="max_tokens",
        )
    if not decision.admitted:
        assert decision.bucket is not None
        metrics.record_ratelimit_rejection(bucket_label(decision.bucket), current_schema())
        raise RateLimited(decision, buckets, tokens)
    return RateLimitState(buckets, decision.levels)


def ratelimit_state(buckets: tuple[Bucket, ...]) -> RateLimitState | None:
    """The buckets as they stand (for the headers of a response that takes
    nothing); None when there are none or Redis cannot say."""
    if not buckets:
        return None
    try:
        return RateLimitState(buckets, buckets_peek(buckets))
    except redis.RedisError:
        return None


def ratelimit_headers(principal: Principal) -> dict[str, str]:
    """The caller's `x-ratelimit-*` headers as their buckets stand, for a response
    that took nothing from them (a poll, a refusal); none when no limit applies."""
    buckets = buckets_for(
        tenant_schema=principal.tenant_schema, user_id=principal.user_id, tier=principal.tier, spec=None
    )
    state = ratelimit_state(buckets)
    return state.headers() if state is not None else {}


def ratelimit_reconcile(buckets: tuple[Bucket, ...], *, estimated: int, used: int) -> None:
    """After the call: give back the tokens the estimate held beyond what was used
    (or take the excess). Best effort: a Redis error here only makes the limit stricter."""
    _adjust(buckets, [estimated - used if b.unit is Unit.TOKENS else 0 for b in buckets])


def ratelimit_refund(buckets: tuple[Bucket, ...], *, tokens: int) -> None:
    """A request admitted but then refused (budget, store, idempotent replay) or
    cancelled before it ran gives everything back: its tokens and its request."""
    _adjust(buckets, _costs(buckets, tokens))


def _adjust(buckets: tuple[Bucket, ...], deltas: list[float]) -> None:
    try:
        buckets_adjust(buckets, deltas)
    except redis.RedisError as exc:
        logger.warning("rate limit reconciliation skipped: %s", exc)
