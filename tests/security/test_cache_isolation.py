"""What the caches may reveal and skip, driven as a hostile tenant user would:
with a per-user cache scope no user learns what a colleague asked (exact or
semantic, `cache.mode: "only"` included); the same words about another image
never reuse the other image's answer; an answer from the exact cache still pays
the request rate limits."""

from __future__ import annotations

import base64
import struct
from collections.abc import Iterator
from typing import Any

import pytest

from apps.catalog.models import LLMModel
from apps.catalog.selectors import catalog_cache_clear
from apps.controls.models import CachePolicy, CacheScope, RateLimit
from tests.support import Personas, job_until_final

QUESTION = {"model": "local-small", "messages": [{"role": "user", "content": "our merger target?"}], "temperature": 0}
NYC = "What's the weather in NYC?"
PARAPHRASE = "Weather in New York City?"


def _submit(client: Any, body: dict[str, Any]) -> Any:
    return client.post("/api/v1/jobs", body, format="json")


def _run(client: Any, body: dict[str, Any]) -> dict[str, Any]:
    response = _submit(client, body)
    assert response.status_code == 202, response.json()
    return job_until_final(client, response.json()["id"])


def _calls(upstream: Any) -> int:
    return int(upstream.stats()["chat_per_model"].get("local-small", 0))


def test_per_tenant_scope_shares_answers_by_default(worker, committed_personas: Personas, upstream):
    _run(committed_personas.alice.client(), QUESTION)
    # The default (no policy, or scope tenant): colleagues share answers, as before.
    shared = _submit(committed_personas.bob.client(), {**QUESTION, "cache": {"mode": "only"}})
    assert shared.status_code == 202 and shared.json()["cached"] == "exact"


def test_per_user_scope_never_tells_a_user_what_a_colleague_asked(worker, committed_personas: Personas, upstream):
    alice, bob = committed_personas.alice, committed_personas.bob
    CachePolicy.objects.create(tenant=alice.tenant, scope=CacheScope.USER)
    _run(alice.client(), QUESTION)
    probe = _submit(bob.client(), {**QUESTION, "cache": {"mode": "only"}})
    assert probe.status_code == 404 and probe.json()["error"]["code"] == "cache_miss"
    # Bob's own call is his own: it calls the model, and does not join Alice's flight.
    assert _run(bob.client(), QUESTION)["cached"] is None
    assert _calls(upstream) == 2
    # Each still reuses their own answer.
    again = _submit(alice.client(), {**QUESTION, "cache": {"mode": "only"}})
    assert again.status_code == 202 and again.json()["cached"] == "exact"


def test_per_user_scope_partitions_the_semantic_cache(worker, committed_personas: Personas, upstream):
    alice, bob = committed_personas.alice, committed_personas.bob
    CachePolicy.objects.create(
        tenant=alice.tenant,
        scope=CacheScope.USER,
        semantic_enabled=True,
        embedder_base_url=upstream.base_url,
        embedder_model="embed-small",
        embedder_dimensions=384,
    )
    upstream.configure(embedding_aliases={PARAPHRASE.lower(): NYC.lower()})
    ask = {"model": "local-small", "temperature": 0.7}
    _run(alice.client(), {**ask, "messages": [{"role": "user", "content": NYC}]})
    # The very same vector, but Bob's partition is his own: no reuse of Alice's answer.
    assert _run(bob.client(), {**ask, "messages": [{"role": "user", "content": PARAPHRASE}]})["cached"] is None
    assert _run(alice.client(), {**ask, "messages": [{"role": "user", "content": PARAPHRASE}]})["cached"] == "semantic"
    assert _calls(upstream) == 2


@pytest.fixture
def local_small_sees_images(committed_personas: Personas) -> Iterator[None]:
    """local-small takes images for this test (the catalog outlives each test)."""
    LLMModel.objects.filter(slug="local-small").update(input_modalities=["text", "image"])
    catalog_cache_clear()
    yield
    LLMModel.objects.filter(slug="local-small").update(input_modalities=["text"])
    catalog_cache_clear()


def _png(width: int) -> str:
    ihdr = struct.pack(">IIBBBBB", width, 64, 8, 2, 0, 0, 0)
    raw = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr + b"\x00\x00\x00\x00"
    return "data:image/png;base64," + base64.b64encode(raw).decode()


def test_the_same_words_about_another_image_never_reuse_its_answer(
    worker, committed_personas: Personas, upstream, local_small_sees_images
):
    alice = committed_personas.alice
    CachePolicy.objects.create(
        tenant=alice.tenant,
        semantic_enabled=True,
        embedder_base_url=upstream.base_url,
        embedder_model="embed-small",
        embedder_dimensions=384,
    )

    def about(image: str) -> dict[str, Any]:
        content = [
            {"type": "text", "text": "Is this scan malignant?"},
            {"type": "image_url", "image_url": {"url": image}},
        ]
        return {"model": "local-small", "temperature": 0.7, "messages": [{"role": "user", "content": content}]}

    first, other = _png(64), _png(65)
    assert _run(alice.client(), about(first))["cached"] is None
    # Identical text, identical embedding: another image is another question.
    assert _run(alice.client(), about(other))["cached"] is None
    assert _calls(upstream) == 2
    # The same image again does reuse its own answer.
    assert _run(alice.client(), about(first))["cached"] == "semantic"
    assert _calls(upstream) == 2


def test_exact_cache_hits_pay_the_request_rate_limit(worker, committed_personas: Personas, upstream):
    alice = committed_personas.alice
    RateLimit.objects.create(tenant=alice.tenant, tokens_per_minute=1_000_000, requests_per_minute=2)
    client = alice.client()
    _run(client, QUESTION)  # a call: one request
    hit = _submit(client, QUESTION)  # a hit: one request too, and it says so
    assert hit.status_code == 202 and hit.json()["cached"] == "exact"
    assert hit.headers["x-ratelimit-remaining-requests"] == "0"
    refused = _submit(client, QUESTION)
    assert refused.status_code == 429, refused.json()
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert "request rate limit" in refused.json()["error"]["message"]
    assert _calls(upstream) == 1
