"""When a request may be answered from cache, and what is written after it.

A request's `cache` option (`{"mode": ..., "ttl": seconds}`) and its tenant's
policy (operator admin: `controls.CachePolicy`) decide:

- `use` (the default): look up and write when the request is cacheable: it is
  deterministic (temperature 0 or top_p 0), or the tenant caches all requests,
  or the request asked for `use` explicitly;
- `refresh`: skip the lookup, call the model, write the answer;
- `bypass`: neither look up nor write;
- `only`: look up, and answer `cache_miss` (404) instead of calling a model.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from django.conf import settings

from apps.controls.models import CachePolicy
from apps.core.ttlcache import TTLCache


class CacheMode(StrEnum):
    USE = "use"
    REFRESH = "refresh"
    BYPASS = "bypass"
    ONLY = "only"


@dataclass(frozen=True)
class Policy:
    exact_ttl_seconds: int
    cache_all_requests: bool


_policies: TTLCache[Policy] = TTLCache()


def policy_for(tenant_schema: str) -> Policy:
    """The tenant's cache policy (the defaults when the operator set none), cached
    for CACHE_POLICY_CACHE_SECONDS."""

    def load() -> Policy:
        row = CachePolicy.objects.filter(tenant__schema_name=tenant_schema).first()
        if row is None:
            return Policy(settings.CACHE_DEFAULT_TTL_SECONDS, False)
        return Policy(row.exact_ttl_seconds, row.cache_all_requests)

    return _policies.get_or_load(tenant_schema, settings.CACHE_POLICY_CACHE_SECONDS, load)


def policies_cache_clear() -> None:
    _policies.clear()


@dataclass(frozen=True)
class CachePlan:
    """What the cache does for one request. `key` names the exact-cache entry and
    the single flight; empty when the request does not use the cache at all."""

    mode: CacheMode
    key: str
    lookup: bool
    write: bool
    ttl: int

    def as_json(self) -> dict[str, Any]:
        return {"mode": self.mode.value, "key": self.key, "lookup": self.lookup, "write": self.write, "ttl": self.ttl}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CachePlan | None:
        if not data.get("key"):
            return None
        return cls(CacheMode(data["mode"]), data["key"], bool(data["lookup"]), bool(data["write"]), int(data["ttl"]))


def deterministic(params: dict[str, Any]) -> bool:
    return params.get("temperature") == 0 or params.get("top_p") == 0


def exact_hash(*, tenant_schema: str, model: str, messages: list[dict[str, Any]], params: dict[str, Any]) -> str:
    """SHA-256 of the canonical request: the tenant, the model, the messages and
    every parameter passed to the provider (all of them change the output)."""
    canonical = json.dumps(
        {"tenant": tenant_schema, "model": model, "messages": messages, "params": params},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def cache_plan(
    *,
    tenant_schema: str,
    model: str,
    messages: list[dict[str, Any]],
    params: dict[str, Any],
    option: dict[str, Any] | None,
) -> CachePlan:
    """The plan for a request: its `cache` option (None when it sent none)
    against the tenant's policy."""
    mode = CacheMode((option or {}).get("mode") or CacheMode.USE)
    policy = policy_for(tenant_schema)
    ttl = int((option or {}).get("ttl") or policy.exact_ttl_seconds)
    if mode is CacheMode.BYPASS:
        return CachePlan(mode, "", lookup=False, write=False, ttl=ttl)
    cacheable = mode is not CacheMode.USE or option is not None or policy.cache_all_requests or deterministic(params)
    if not cacheable:
        return CachePlan(mode, "", lookup=False, write=False, ttl=ttl)
    key = exact_hash(tenant_schema=tenant_schema, model=model, messages=messages, params=params)
    return CachePlan(mode, key, lookup=mode is not CacheMode.REFRESH, write=mode is not CacheMode.ONLY, ttl=ttl)
