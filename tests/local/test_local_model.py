"""The bundled local model end to end: SmolLM2-135M-Instruct on llama.cpp's
OpenAI-compatible server (what `make run` starts for `local-small`), called by
the real Celery worker through the real platform. Its words are not fixed, so
these tests check structure, usage, cost and that text arrived.

llama.cpp's server streams no usage (even when `include_usage` is asked), so
the platform counts the tokens itself (tiktoken) and marks them estimated: a
count close to, not equal to, the model's own (another tokenizer)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from django_tenants.utils import tenant_context

from apps.billing.models import LedgerEntry, LedgerKind
from apps.catalog.models import LLMModel, Provider
from apps.catalog.selectors import catalog_cache_clear
from apps.controls.models import CachePolicy, EmbedderBackend
from tests.support import Personas, http_client, job_until_final, sse_events

PROMPT = "What is the capital of France?"


@pytest.fixture
def smollm(local_model: str, committed_db: None) -> Iterator[str]:
    """`local-small` served by the local model for this test (restored after)."""
    row = LLMModel.objects.get(slug="local-small")
    before = {"base_url": row.base_url, "provider": row.provider}
    LLMModel.objects.filter(pk=row.pk).update(base_url=local_model, provider=Provider.LLAMA_CPP)
    catalog_cache_clear()
    yield local_model
    LLMModel.objects.filter(pk=row.pk).update(**before)
    catalog_cache_clear()


def _submit(client: httpx.Client, content: str, **extra: Any) -> dict[str, Any]:
    body = {"model": "local-small", "messages": [{"role": "user", "content": content}], "max_tokens": 24, **extra}
    response = client.post("/api/v1/jobs", json=body)
    assert response.status_code == 202, response.text
    return job_until_final(client, response.json()["id"], timeout=60)


def test_a_job_is_answered_by_the_local_model(smollm, worker, platform_server, committed_personas: Personas):
    alice = committed_personas.alice
    with http_client(platform_server, alice.key, timeout=30) as client:
        job = _submit(client, PROMPT, temperature=0)
    assert job["status"] == "succeeded", job["error"]
    assert isinstance(job["output"], str) and job["output"].strip()
    assert job["finish_reason"] in {"stop", "length"}
    usage = job["usage"]
    assert usage["input_tokens"] > 0 and usage["output_tokens"] > 0
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    assert usage["estimated"] is True
    assert job["provider_latency_ms"] > 0
    assert job["answered_by"] == "local-small"
    # Priced at the catalog's rates, in the ledger.
    with tenant_context(alice.tenant):
        charge = LedgerEntry.objects.get(job_id=job["id"], kind=LedgerKind.CHARGE)
    assert charge.model == "local-small"
    assert charge.input_tokens == usage["input_tokens"] and charge.output_tokens == usage["output_tokens"]
    assert charge.cost_micros > 0


def test_the_job_stream_delivers_the_models_tokens(smollm, worker, platform_server, committed_personas: Personas):
    alice = committed_personas.alice
    with http_client(platform_server, alice.key, timeout=60) as client:
        body = {"model": "local-small", "messages": [{"role": "user", "content": "Tell me a story."}], "max_tokens": 24}
        job_id = client.post("/api/v1/jobs", json=body).json()["id"]
        with client.stream("GET", f"/api/v1/jobs/{job_id}/events") as response:
            assert response.status_code == 200
            events = [data for _, data in sse_events(response)]
    types = [event["type"] for event in events]
    deltas = [event["text"] for event in events if event["type"] == "delta"]
    assert len(deltas) >= 2, types  # arrived in pieces, as generated
    assert "".join(deltas).strip()
    assert types[-2:] == ["usage", "done"], types
    usage = events[-2]
    assert usage["output_tokens"] > 0 and usage["input_tokens"] > 0 and usage["estimated"] is True
    assert events[-1]["status"] == "succeeded"


def test_the_openai_sdk_streams_from_the_local_model(smollm, worker, platform_server, committed_personas: Personas):
    sdk = openai.OpenAI(
        base_url=f"{platform_server.url}/v1", api_key=committed_personas.alice.key, max_retries=0, timeout=60
    )
    chunks = list(
        sdk.chat.completions.create(
            model="local-small",
            messages=[{"role": "user", "content": "Name three colours."}],
            max_tokens=24,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    deltas = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(deltas) >= 2 and "".join(deltas).strip()
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finish) == 1 and finish[0] in {"stop", "length"}
    # llama.cpp's stream carries no usage: the platform counts the tokens itself.
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage is not None
    assert usage.completion_tokens > 0 and usage.prompt_tokens > 0


def test_a_paraphrase_is_answered_from_the_semantic_cache_with_the_local_embedder(
    smollm, worker, platform_server, committed_personas: Personas
):
    alice = committed_personas.alice
    CachePolicy.objects.create(tenant=alice.tenant, semantic_enabled=True, embedder_backend=EmbedderBackend.LOCAL)
    with http_client(platform_server, alice.key, timeout=30) as client:
        first = _submit(client, PROMPT)
        assert first["status"] == "succeeded" and first["cached"] is None
        paraphrase = _submit(client, "Which city is the capital of France?")
        # Another country, and a number the first never had: the model answers both.
        other = _submit(client, "What is the capital of Spain?")
        counted = _submit(client, "What are the 3 biggest cities of France?")
    assert paraphrase["cached"] == "semantic", json.dumps(paraphrase)
    assert paraphrase["output"] == first["output"]
    assert 0.92 <= paraphrase["cache_similarity"] < 1
    assert other["cached"] is None and counted["cached"] is None
    with tenant_context(alice.tenant):
        assert LedgerEntry.objects.filter(kind=LedgerKind.CHARGE).count() == 3
        assert LedgerEntry.objects.filter(kind=LedgerKind.CACHED).count() == 1


def test_a_json_schema_gets_valid_json_from_the_local_model(
    smollm, worker, platform_server, committed_personas: Personas
):
    """llama.cpp's server constrains the output with a grammar built from the
    schema (the provider adapter sends it in that server's dialect): SmolLM2's
    answer parses and has the schema's fields and types."""
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
        "required": ["city", "population"],
    }
    response_format = {"type": "json_schema", "json_schema": {"name": "capital", "schema": schema, "strict": True}}
    with http_client(platform_server, committed_personas.alice.key, timeout=30) as client:
        job = _submit(client, PROMPT, temperature=0, max_tokens=64, response_format=response_format)
    assert job["status"] == "succeeded", job["error"]
    answer = json.loads(job["output"])
    assert set(answer) == {"city", "population"}
    assert isinstance(answer["city"], str) and isinstance(answer["population"], int)
