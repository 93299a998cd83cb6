"""Which models a job falls back to, from the tenant's or its tier's policy
(`controls.FallbackPolicy`) and the request's own `fallbacks`."""

from __future__ import annotations

from dataclasses import dataclass

from django.conf import settings

from apps.core.errors import InvalidRequest
from apps.core.ttlcache import TTLCache
from apps.llm.chain import SEMANTIC_CACHE

from .models import FallbackPolicy


@dataclass(frozen=True)
class Chain:
    allowed: tuple[str, ...]  # what requests may name (the policy's models, and the cache if it is last)
    default: tuple[str, ...]  # the policy's chain, the cache last when it is on


_policies: TTLCache[Chain] = TTLCache()


def _chain(tenant_schema: str, tier: str) -> Chain:
    def load() -> Chain:
        row = (
            FallbackPolicy.objects.filter(tenant__schema_name=tenant_schema).first()
            or FallbackPolicy.objects.filter(tier=tier).first()
        )
        if row is None:
            return Chain((), ())
        steps = tuple(row.chain) + ((SEMANTIC_CACHE,) if row.semantic_cache_last else ())
        return Chain(steps, steps)

    return _policies.get_or_load((tenant_schema, tier), settings.FALLBACK_POLICY_CACHE_SECONDS, load)


def fallbacks_for(*, tenant_schema: str, tier: str, model: str, requested: list[str] | None) -> list[str]:
    """The steps after `model`: the request's `fallbacks` (each one the policy
    allows), else the policy's chain without `model` itself."""
    chain = _chain(tenant_schema, tier)
    if requested is None:
        return [step for step in chain.default if step != model]
    refused = [step for step in requested if step not in chain.allowed]
    if refused:
        allowed = ", ".join(chain.allowed) or "none"
        raise InvalidRequest(
            f"Fallback {refused[0]!r} is not allowed for you. Allowed fallbacks: {allowed}.",
            code="fallback_not_allowed",
            param="fallbacks",
        )
    return [step for step in dict.fromkeys(requested) if step != model]
