from __future__ import annotations

from decimal import Decimal

from .models import LLMModel, Provider


def catalog_seed_defaults(*, local_base_url: str) -> list[str]:
    """Add the demo catalog where missing (never overwrites an operator's edits).
    Returns the slugs it created."""
    defaults = [
        {
            # SmolLM2-135M-Instruct on llama.cpp's server (devtools/local_model.py).
            "slug": "local-small",
            "provider": Provider.LLAMA_CPP,
            "base_url": local_base_url,
            "api_key_env": "",
            "context_window": 8192,
            "max_output_tokens": 2048,
            # A nominal price so local jobs are metered like paid ones.
            "input_price_per_mtok": Decimal("0.010000"),
            "output_price_per_mtok": Decimal("0.020000"),
            # llama.cpp's server constrains JSON with a grammar; SmolLM2's template has
            # no tools and no developer role.
            "supports_tools": False,
            "supports_developer_role": False,
            "supports_embeddings": False,  # the demo's llama.cpp server is started for chat
            "extra_params": ["top_k", "min_p", "repetition_penalty"],
            "enabled": True,
        },
        {
            "slug": "gpt-4o",
            "provider": Provider.OPENAI,
            "base_url": "https://api.openai.com/v1",
            "api_key_env": "OPENAI_API_KEY",
            "context_window": 128000,
            "max_output_tokens": 16384,
            "input_price_per_mtok": Decimal("2.500000"),
            "output_price_per_mtok": Decimal("10.000000"),
            "input_modalities": ["text", "image"],
            "max_tokens_per_part": 1445,  # 85 + 8 tiles x 170 (high detail)
            "max_n": 128,
            "service_tiers": {"priority": "1.7"},  # $4.25 / $17 per 1M at priority
            "supports_embeddings": False,
            # Off until an operator sets OPENAI_API_KEY and enables it.
            "enabled": False,
        },
        {
            "slug": "gpt-4o-mini",
            "provider": Provider.OPENAI,
            "base_url": "https://api.openai.com/v1",
            "api_key_env": "OPENAI_API_KEY",
            "context_window": 128000,
            "max_output_tokens": 16384,
            "input_price_per_mtok": Decimal("0.150000"),
            "output_price_per_mtok": Decimal("0.600000"),
            "input_modalities": ["text", "image"],
            "supports_embeddings": False,
            "max_tokens_per_part": 48169,  # 2833 + 8 tiles x 5667: gpt-4o-mini counts images so
            "max_n": 128,
            "enabled": False,
        },
    ]
    created = []
    for row in defaults:
        slug = str(row.pop("slug"))
        _, was_created = LLMModel.objects.get_or_create(slug=slug, defaults=row)
        if was_created:
            created.append(slug)
    return created
