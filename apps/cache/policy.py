"""When a request may be answered from cache, and what is written after it.

A request's `cache` option (`{"mode": ..., "ttl": seconds}`) and its tenant's
policy (operator admin: `controls.CachePolicy`) decide:

- `use` (the default): look up and write when the request is cacheable: it is
  deterministic (temperature 0 or top_p 0), or the tenant caches all requests,
  or the request asked for `use` explicitly;
- `refresh`: skip the lookup, call the model, write the answer;
- `bypass`: neither look up nor write;
- `only`: look up, and answer `cache_miss` (404) instead of calling a model.

The semantic cache (paraphrases, in the worker) applies when the tenant enabled
it, or the request asked for it (`"semantic": true`) and the tenant has an
embedder; the same modes govern it, but not determinism: enabling it is the
tenant's choice to reuse answers.

The policy's scope says who shares an answer: the tenant (the default: its
users reuse each other's answers) or each user (the exact key and the semantic
partition name the user, so neither a hit nor `only`'s 404 tells a user
anything about what a colleague asked).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from django.conf import settings

from apps.controls.models import CachePolicy, CacheScope, EmbedderBackend
from apps.core.errors import InvalidRequest
from apps.core.ttlcache import TTLCache

from . import local_embedder
from .embedder import Embedder, OpenAICompatibleEmbedder

# The threshold for an API embedder when the policy leaves it blank (the local
# embedder's is measured: local_embedder.DEFAULT_THRESHOLD).
API_EMBEDDER_THRESHOLD = 0.95


class CacheMode(StrEnum):
    USE = "use"
    REFRESH = "refresh"
    BYPASS = "bypass"
    ONLY = "only"


@dataclass(frozen=True)
class Policy:
    exact_ttl_seconds: int
    cache_all_requests: bool
    semantic_enabled: bool = False
    semantic_threshold: float = API_EMBEDDER_THRESHOLD
    semantic_ttl_seconds: int = 7 * 24 * 3600
    semantic_max_entries: int = 10_000
    embedder: Embedder | None = None  # None: no embedder configured
    scope: str = CacheScope.TENANT  # who shares an entry: the tenant, or each user
    exact_max_entries: int = 10_000

    def owner(self, user_id: int | None) -> str:
        """Whose entries a request reads and writes, within its tenant: "" (the
        tenant's, shared) or the user's own."""
        if self.scope == CacheScope.USER:
            if user_id is None:
                raise ValueError("a per-user cache scope needs the user")
            return f"user:{user_id}"
        return ""


_policies: TTLCache[Policy] = TTLCache()


def policy_for(tenant_schema: str) -> Policy:
    """The tenant's cache policy (the defaults when the operator set none), cached
    for CACHE_POLICY_CACHE_SECONDS."""

    def load() -> Policy:
        row = CachePolicy.objects.filter(tenant__schema_name=tenant_schema).first()
        if row is None:
            return Policy(settings.CACHE_DEFAULT_TTL_SECONDS, False, exact_max_entries=settings.CACHE_EXACT_MAX_ENTRIES)
        embedder: Embedder | None = None
        default_threshold = API_EMBEDDER_THRESHOLD
        if row.embedder_backend == EmbedderBackend.LOCAL:
            embedder = local_embedder.LocalEmbedder()
            default_threshold = local_embedder.DEFAULT_THRESHOLD
        elif row.embedder_base_url and row.embedder_model:
            embedder = OpenAICompatibleEmbedder(
                base_url=row.embedder_base_url,
                model=row.embedder_model,
                dimensions=row.embedder_dimensions,
                api_key_env=row.embedder_api_key_env,
            )
        return Policy(
            exact_ttl_seconds=row.exact_ttl_seconds,
            cache_all_requests=row.cache_all_requests,
            semantic_enabled=row.semantic_enabled and embedder is not None,
            semantic_threshold=default_threshold if row.semantic_threshold is None else row.semantic_threshold,
            semantic_ttl_seconds=row.semantic_ttl_seconds,
            semantic_max_entries=row.semantic_max_entries,
            embedder=embedder,
            scope=row.scope,
            exact_max_entries=row.exact_max_entries,
        )

    return _policies.get_or_load(tenant_schema, settings.CACHE_POLICY_CACHE_SECONDS, load)


def policies_cache_clear() -> None:
    _policies.clear()


@dataclass(frozen=True)
class CachePlan:
    """What the cache does for one request. `key` names the exact-cache entry and
    the single flight; empty when the request does not use the cache at all."""

    mode: CacheMode
    key: str  # the exact entry's hash; "" when the exact cache does not apply
    lookup: bool
    write: bool
    ttl: int
    semantic: bool = False  # the semantic cache applies too (looked up and written in the worker)

    def as_json(self) -> dict[str, Any]:
        return {
            "mode": self.mode.value,
            "key": self.key,
            "lookup": self.lookup,
            "write": self.write,
            "ttl": self.ttl,
            "semantic": self.semantic,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CachePlan | None:
        if not data.get("key") and not data.get("semantic"):
            return None
        return cls(
            CacheMode(data["mode"]),
            data["key"],
            bool(data["lookup"]),
            bool(data["write"]),
            int(data["ttl"]),
            bool(data.get("semantic")),
        )


def deterministic(params: dict[str, Any]) -> bool:
    return params.get("temperature") == 0 or params.get("top_p") == 0


# Parameters sent to the provider that do not change its answer (who the end user
# is, how the provider caches the prompt, whether it keeps the completion, which
# service tier serves it: a tier changes speed and price, not the text): left out
# of the exact key, so they do not split identical requests into separate entries.
ANSWER_NEUTRAL = frozenset(
    {
        "user",
        "safety_identifier",
        "prompt_cache_key",
        "prompt_cache_options",
        "prompt_cache_retention",
        "store",
        "service_tier",
    }
)


def exact_hash(
    *, tenant_schema: str, model: str, messages: list[dict[str, Any]], params: dict[str, Any], owner: str = ""
) -> str:
    """SHA-256 of the canonical request: the tenant, the model, the messages and
    every parameter passed to the provider that changes the output (tools,
    response_format, seed, logprobs, sampling, reasoning settings, extras: all but
    ANSWER_NEUTRAL), and the owner when entries are per user (Policy.owner)."""
    answer_params = {key: value for key, value in params.items() if key not in ANSWER_NEUTRAL}
    fields: dict[str, Any] = {"tenant": tenant_schema, "model": model, "messages": messages, "params": answer_params}
    if owner:  # only then: per-tenant keys stay what they were
        fields["owner"] = owner
    canonical = json.dumps(
        fields,
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def semantic_allowed(params: dict[str, Any]) -> bool:
    """Whether a paraphrase's answer may answer this request: never when it calls
    for tools or a structured answer (a text answer, or another request's tool
    calls, is not what it asked for), nor for several choices (n > 1: one stored
    answer is not n)."""
    response_format = params.get("response_format") or {}
    return (
        not (params.get("tools") or params.get("functions"))
        and response_format.get("type", "text") == "text"
        and int(params.get("n") or 1) == 1
    )


def cache_plan(
    *,
    tenant_schema: str,
    model: str,
    messages: list[dict[str, Any]],
    params: dict[str, Any],
    option: dict[str, Any] | None,
    user_id: int,
) -> CachePlan:
    """The plan for a request: its `cache` option (None when it sent none)
    against the tenant's policy (whose scope may make the key the user's own)."""
    mode = CacheMode((option or {}).get("mode") or CacheMode.USE)
    policy = policy_for(tenant_schema)
    ttl = int((option or {}).get("ttl") or policy.exact_ttl_seconds)
    if mode is CacheMode.BYPASS:
        return CachePlan(mode, "", lookup=False, write=False, ttl=ttl)
    asked_semantic = bool((option or {}).get("semantic"))
    if asked_semantic and policy.embedder is None:
        raise InvalidRequest(
            "cache.semantic needs an embedder, and this organisation has none configured.",
            code="semantic_cache_unavailable",
            param="cache.semantic",
        )
    # `only` answers at submission, where only the exact cache is asked.
    semantic = (policy.semantic_enabled or asked_semantic) and mode is not CacheMode.ONLY and semantic_allowed(params)
    lookup, write = mode is not CacheMode.REFRESH, mode is not CacheMode.ONLY
    cacheable = mode is not CacheMode.USE or option is not None or policy.cache_all_requests or deterministic(params)
    owner = policy.owner(user_id)
    key = (
        exact_hash(tenant_schema=tenant_schema, model=model, messages=messages, params=params, owner=owner)
        if cacheable
        else ""
    )
    if not key and not semantic:
        return CachePlan(mode, "", lookup=False, write=False, ttl=ttl)
    return CachePlan(mode, key, lookup=lookup, write=write, ttl=ttl, semantic=semantic)
