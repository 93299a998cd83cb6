from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from django.conf import settings

from apps.core.ttlcache import TTLCache
from apps.llm.tokens import CL100K, encoding_for_model

from .models import DEFAULT_MAX_TOKENS_PER_PART, SELF_HOSTED_PROVIDERS, LLMModel


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """An immutable snapshot of a catalog row, safe to share across threads."""

    slug: str
    provider: str
    provider_model_name: str
    base_url: str
    api_key_env: str
    context_window: int
    max_output_tokens: int
    input_price_per_mtok: Decimal
    output_price_per_mtok: Decimal
    enabled: bool
    tokens_per_minute: int | None = None
    requests_per_minute: int | None = None
    encoding: str = CL100K  # the tiktoken encoding its tokens are counted with
    input_modalities: tuple[str, ...] = ("text",)  # what content parts it takes
    max_tokens_per_part: int = DEFAULT_MAX_TOKENS_PER_PART  # the hold for one non-text part
    allow_remote_media: bool = False  # http(s) image URLs pass (never for a self-hosted provider)
    job_timeout_seconds: int | None = None  # blank: JOB_DEADLINE_SECONDS
    cached_input_price_per_mtok: Decimal | None = None  # blank: the input price
    supports_chat: bool = True
    supports_embeddings: bool = True
    embedding_token_input: bool = False
    supports_tools: bool = True
    supports_json_schema: bool = True
    supports_reasoning: bool = False
    supports_developer_role: bool = True
    extra_params: tuple[str, ...] = ()  # provider extras requests may send (top_k, ...)
    max_n: int = 1  # the most choices one request may ask for
    allows_store: bool = False  # store: true is forwarded
    service_tiers: tuple[tuple[str, Decimal], ...] = ()  # (tier, price multiple) beyond auto and default

    @property
    def job_timeout(self) -> int:
        """A job's deadline on this model, in seconds from its start."""
        return min(self.job_timeout_seconds or settings.JOB_DEADLINE_SECONDS, settings.JOB_TIMEOUT_MAX_SECONDS)


_catalog_cache: TTLCache[dict[str, ModelSpec]] = TTLCache(maxsize=1)


def _load_catalog() -> dict[str, ModelSpec]:
    return {
        row.slug: ModelSpec(
            slug=row.slug,
            provider=row.provider,
            provider_model_name=row.provider_model_name,
            base_url=row.base_url,
            api_key_env=row.api_key_env,
            context_window=row.context_window,
            max_output_tokens=row.max_output_tokens,
            input_price_per_mtok=row.input_price_per_mtok,
            output_price_per_mtok=row.output_price_per_mtok,
            enabled=row.enabled,
            tokens_per_minute=row.tokens_per_minute,
            requests_per_minute=row.requests_per_minute,
            encoding=encoding_for_model(row.provider_model_name, row.tokenizer),
            input_modalities=tuple(row.input_modalities or ("text",)),
            max_tokens_per_part=row.max_tokens_per_part,
            allow_remote_media=row.allow_remote_media and row.provider not in SELF_HOSTED_PROVIDERS,
            job_timeout_seconds=row.job_timeout_seconds,
            cached_input_price_per_mtok=row.cached_input_price_per_mtok,
            supports_chat=row.supports_chat,
            supports_embeddings=row.supports_embeddings,
            embedding_token_input=row.embedding_token_input,
            supports_tools=row.supports_tools,
            supports_json_schema=row.supports_json_schema,
            supports_reasoning=row.supports_reasoning,
            supports_developer_role=row.supports_developer_role,
            extra_params=tuple(row.extra_params or ()),
            max_n=row.max_n,
            allows_store=row.allows_store,
            service_tiers=tuple((tier, Decimal(price)) for tier, price in sorted((row.service_tiers or {}).items())),
        )
        for row in LLMModel.objects.all()
    }


def catalog_snapshot() -> dict[str, ModelSpec]:
    """Every catalog model by slug. The whole (small) table is read at most once
    per CATALOG_CACHE_SECONDS per process, so a submission costs no catalog query."""
    return _catalog_cache.get_or_load("all", settings.CATALOG_CACHE_SECONDS, _load_catalog)


def model_get(slug: str) -> ModelSpec | None:
    return catalog_snapshot().get(slug)


def models_enabled() -> list[ModelSpec]:
    return [spec for spec in catalog_snapshot().values() if spec.enabled]


def catalog_cache_clear() -> None:
    _catalog_cache.clear()
