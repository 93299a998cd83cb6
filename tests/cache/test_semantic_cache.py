"""The semantic cache in each tenant's schema, with embeddings from a real
OpenAI-compatible /v1/embeddings (the test upstream, where a paraphrase can be
given the very vector of the text it paraphrases): paraphrases hit above the
threshold, unrelated prompts miss, another context (system prompt) never hits,
tenants never share entries even with identical embeddings, and entries are
bounded by TTL and count."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.utils import timezone
from django_tenants.utils import tenant_context
from rest_framework.test import APIClient

from apps.accounts.models import User
from apps.accounts.services import api_key_create
from apps.cache.models import SemanticEntry
from apps.controls.models import CachePolicy
from apps.tenants.models import Tenant
from tasks.cache import cache_evict
from tests.support import Personas, job_until_final

NYC = "What's the weather in NYC?"
PARAPHRASE = "Weather in New York City?"


def _policy(tenant: Tenant, upstream: Any, **overrides: Any) -> CachePolicy:
    fields = {
        "semantic_enabled": True,
        "embedder_base_url": upstream.base_url,
        "embedder_model": "embed-small",
        "embedder_dimensions": 384,
        **overrides,
    }
    return CachePolicy.objects.create(tenant=tenant, **fields)


def _ask(client: Any, text: str, *, system: str | None = None, **extra: Any) -> dict[str, Any]:
    messages = [{"role": "system", "content": system}] if system else []
    body = {"model": "local-small", "messages": [*messages, {"role": "user", "content": text}], "temperature": 0.7}
    response = client.post("/api/v1/jobs", {**body, **extra}, format="json")
    assert response.status_code == 202, response.json()
    return job_until_final(client, response.json()["id"])


def _calls(upstream: Any) -> int:
    return int(upstream.stats()["chat_per_model"].get("local-small", 0))


def test_a_paraphrase_is_answered_from_the_semantic_cache(worker, committed_personas: Personas, upstream):
    alice = committed_personas.alice
    _policy(alice.tenant, upstream)
    upstream.configure(embedding_aliases={PARAPHRASE.lower(): NYC.lower()})  # prompts are normalized
    client = alice.client()
    first = _ask(client, NYC)
    assert first["status"] == "succeeded" and first["cached"] is None
    with tenant_context(alice.tenant):
        entry = SemanticEntry.objects.get()
        assert entry.prompt == NYC.lower() and entry.dimensions == 384 and entry.output == first["output"]

    hit = _ask(client, PARAPHRASE)
    assert hit["cached"] == "semantic"
    assert hit["cache_similarity"] > 0.999
    assert hit["output"] == first["output"]
    assert _calls(upstream) == 1
    with tenant_context(alice.tenant):
        assert SemanticEntry.objects.get().hit_count == 1

    # An unrelated question is far below the threshold: the model answers it.
    other = _ask(client, "Tell me a joke about databases.")
    assert other["cached"] is None
    assert _calls(upstream) == 2

    # The tenant's counters: two semantic misses and a hit, with their latency.
    with tenant_context(alice.tenant):
        _, admin_key = api_key_create(user=User.objects.get(pk=alice.user_id), name="admin", is_admin=True)
    admin = APIClient()
    admin.credentials(HTTP_AUTHORIZATION=f"Bearer {admin_key}")
    counters = admin.get("/api/v1/usage").json()["cache"]
    assert counters["semantic_hit"] == 1 and counters["semantic_miss"] == 2
    assert counters["semantic_lookup_ms_mean"] > 0


def test_another_system_prompt_never_hits(worker, committed_personas: Personas, upstream):
    alice = committed_personas.alice
    _policy(alice.tenant, upstream)
    client = alice.client()
    _ask(client, NYC, system="You are a pirate.")
    assert _ask(client, NYC, system="You are a lawyer.")["cached"] is None  # identical embedding, other context
    assert _ask(client, NYC, system="You are a pirate.")["cached"] == "semantic"
    assert _calls(upstream) == 2


def test_tenants_never_share_semantic_entries(worker, committed_personas: Personas, upstream):
    alice, carol = committed_personas.alice, committed_personas.carol
    _policy(alice.tenant, upstream)
    _policy(carol.tenant, upstream)
    _ask(alice.client(), NYC)
    assert _ask(carol.client(), NYC)["cached"] is None  # the identical vector is in acme's schema, not globex's
    assert _calls(upstream) == 2
    with tenant_context(carol.tenant):
        assert SemanticEntry.objects.count() == 1
    with tenant_context(alice.tenant):
        assert SemanticEntry.objects.count() == 1


def test_requests_opt_in_only_where_an_embedder_is_configured(worker, committed_personas: Personas, upstream):
    alice, carol = committed_personas.alice, committed_personas.carol
    _policy(alice.tenant, upstream, semantic_enabled=False)
    client = alice.client()
    assert _ask(client, NYC)["cached"] is None
    assert _ask(client, NYC)["cached"] is None  # not enabled, not asked: no semantic cache
    _ask(client, NYC, cache={"semantic": True})
    assert _ask(client, NYC, cache={"semantic": True})["cached"] in ("semantic", "exact")
    refused = carol.client().post(
        "/api/v1/jobs",
        {"model": "local-small", "messages": [{"role": "user", "content": NYC}], "cache": {"semantic": True}},
        format="json",
    )
    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == "semantic_cache_unavailable"


def test_entries_are_bounded_by_ttl_and_count(worker, committed_personas: Personas, upstream):
    alice = committed_personas.alice
    _policy(alice.tenant, upstream, semantic_max_entries=3)
    client = alice.client()
    for n in range(5):
        _ask(client, f"question number {n}")
    with tenant_context(alice.tenant):
        assert SemanticEntry.objects.count() == 5
        # The first question was hit since: it is the most recently used and stays.
        SemanticEntry.objects.filter(prompt="question number 0").update(last_hit_at=timezone.now())
        expired = SemanticEntry.objects.get(prompt="question number 4")
        expired.expires_at = timezone.now() - timedelta(seconds=1)
        expired.save()
    # An expired entry is never a hit, even before eviction.
    assert _ask(client, "question number 4")["cached"] is None
    cache_evict()
    with tenant_context(alice.tenant):
        kept = sorted(SemanticEntry.objects.values_list("prompt", flat=True))
    assert len(kept) == 3
    assert "question number 0" in kept and "question number 1" not in kept


def test_an_identical_embedding_that_differs_in_a_number_is_not_reused(worker, committed_personas: Personas, upstream):
    """The guard sits in the lookup: even a similarity of 1 is refused when the
    prompts' numbers differ; the entry that agrees is still found."""
    alice = committed_personas.alice
    _policy(alice.tenant, upstream)
    # Both prompts get the very same vector from the embedder.
    upstream.configure(embedding_aliases={"what is 2+3?": "what is 2+2?", "what's 2+2?": "what is 2+2?"})
    client = alice.client()
    first = _ask(client, "What is 2+2?")
    other = _ask(client, "What is 2+3?")
    assert other["cached"] is None and other["output"] != first["output"]
    assert _calls(upstream) == 2
    same = _ask(client, "What's 2+2?")
    assert same["cached"] == "semantic" and same["output"] == first["output"]
    assert _calls(upstream) == 2
