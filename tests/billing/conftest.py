from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest

from apps.catalog.models import LLMModel
from apps.catalog.selectors import catalog_cache_clear
from devtools.upstream import UpstreamServer

LONG_REPLY = " ".join(f"w{i}" for i in range(400))


@pytest.fixture
def micro_priced(committed_db: None, upstream: UpstreamServer) -> Iterator[None]:
    """local-small with free input and $1 per 1M output tokens: a call costs exactly
    its output tokens in micro-dollars, and the upstream's reply is long enough to
    use every token it is allowed (then it stops at `length`)."""
    LLMModel.objects.filter(slug="local-small").update(
        input_price_per_mtok=Decimal("0"), output_price_per_mtok=Decimal("1")
    )
    catalog_cache_clear()
    upstream.configure(reply=LONG_REPLY)
    try:
        yield
    finally:
        LLMModel.objects.filter(slug="local-small").update(
            input_price_per_mtok=Decimal("0.150000"), output_price_per_mtok=Decimal("0.600000")
        )
        catalog_cache_clear()


def chat_bodies(upstream: UpstreamServer) -> list[dict[str, Any]]:
    """The chat requests the upstream received (the last 50), oldest first."""
    return [
        r["body"]
        for r in upstream.stats()["last_requests"]
        if r["path"].endswith("/chat/completions") and isinstance(r["body"], dict)
    ]
