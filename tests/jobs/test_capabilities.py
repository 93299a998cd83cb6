"""What each catalog model can take, against the live platform: a request that
needs what its model lacks is a 400 naming the field on both APIs; a fallback
step that lacks it is skipped; a developer message reaches a model without that
role as a system message; llama.cpp gets a JSON schema in its own dialect; a
provider extra passes only where the model allows it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from apps.catalog.models import LLMModel
from apps.catalog.selectors import catalog_cache_clear
from apps.controls.models import FallbackPolicy
from tests.support import Personas, http_client, job_until_final

TOOL = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}}}
OBJECT: dict[str, Any] = {"type": "object", "properties": {}}
SCHEMA = {"type": "json_schema", "json_schema": {"name": "city", "schema": OBJECT}}
ASK = [{"role": "user", "content": "hello capabilities"}]


@pytest.fixture
def local_small(committed_db: None) -> Iterator[Any]:
    """local-small's catalog row, edited by the test and put back after."""
    before = LLMModel.objects.get(slug="local-small")
    try:
        yield LLMModel.objects.filter(slug="local-small")
    finally:
        before.save()
        catalog_cache_clear()


def _edit(rows: Any, **fields: Any) -> None:
    rows.update(**fields)
    catalog_cache_clear()


def _sent(upstream: Any) -> dict[str, Any]:
    bodies = [r["body"] for r in upstream.stats()["last_requests"] if r["path"].endswith("/chat/completions")]
    return bodies[-1]


@pytest.mark.parametrize(
    ("capability", "extra", "param"),
    [
        ("supports_tools", {"tools": [TOOL]}, "tools"),
        ("supports_json_schema", {"response_format": SCHEMA}, "response_format"),
        ("supports_reasoning", {"reasoning_effort": "high"}, "reasoning_effort"),
    ],
)
def test_a_request_the_model_cannot_take_is_400_naming_the_field(
    platform_server, committed_personas: Personas, local_small, capability: str, extra: dict[str, Any], param: str
):
    _edit(local_small, **{capability: False})
    body = {"model": "local-small", "messages": ASK, **extra}
    with http_client(platform_server, committed_personas.alice.key) as client:
        for path in ("/v1/chat/completions", "/api/v1/jobs"):
            response = client.post(path, json=body)
            assert response.status_code == 400, response.text
            assert (response.json()["error"]["param"], response.json()["error"]["code"]) == (
                param,
                "unsupported_parameter",
            )


def test_a_fallback_step_that_cannot_take_the_request_is_skipped(
    worker, committed_personas: Personas, local_small, upstream
):
    FallbackPolicy.objects.create(tier="premium", chain=["premium-large", "local-small"])
    _edit(local_small, supports_tools=False)
    upstream.add_faults({"model": "premium-large", "status": 500, "message": "premium is down", "times": 10})
    carol = committed_personas.carol
    created = carol.client().post(
        "/api/v1/jobs", {"model": "premium-large", "messages": ASK, "tools": [TOOL]}, format="json"
    )
    job = job_until_final(carol.client(), created.json()["id"], timeout=30)
    assert job["status"] == "failed"
    skipped = [a for a in job["attempts"] if a["model"] == "local-small"]
    assert [a["outcome"] for a in skipped] == ["skipped"] and "does not take tools" in skipped[0]["message"]
    assert int(upstream.stats()["chat_per_model"].get("local-small", 0)) == 0


def test_a_fallback_step_that_cannot_take_the_requests_images_is_skipped(
    worker, committed_personas: Personas, local_small, upstream
):
    premium = LLMModel.objects.filter(slug="premium-large")
    FallbackPolicy.objects.create(tier="premium", chain=["premium-large", "local-small"])
    _edit(premium, input_modalities=["text", "image"])
    try:
        upstream.add_faults({"model": "premium-large", "status": 500, "message": "premium is down", "times": 10})
        image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
        messages = [{"role": "user", "content": [{"type": "text", "text": "what is this"}, image]}]
        carol = committed_personas.carol
        created = carol.client().post("/api/v1/jobs", {"model": "premium-large", "messages": messages}, format="json")
        assert created.status_code == 202, created.json()
        job = job_until_final(carol.client(), created.json()["id"], timeout=30)
        assert job["status"] == "failed"
        skipped = [a for a in job["attempts"] if a["model"] == "local-small"]
        assert [a["outcome"] for a in skipped] == ["skipped"]
        assert "does not take image input" in skipped[0]["message"]
        assert int(upstream.stats()["chat_per_model"].get("local-small", 0)) == 0
    finally:
        _edit(premium, input_modalities=["text"])


def test_a_developer_message_is_sent_as_system_where_the_model_lacks_the_role(
    platform_server, worker, committed_personas: Personas, local_small, upstream
):
    _edit(local_small, supports_developer_role=False)
    body = {"model": "local-small", "messages": [{"role": "developer", "content": "be brief"}, *ASK]}
    with http_client(platform_server, committed_personas.alice.key) as client:
        assert client.post("/v1/chat/completions", json=body).status_code == 200
    assert [m["role"] for m in _sent(upstream)["messages"]] == ["system", "user"]


def test_llama_cpp_gets_a_json_schema_in_its_own_dialect(
    platform_server, worker, committed_personas: Personas, local_small, upstream
):
    _edit(local_small, provider="llama.cpp")
    body = {"model": "local-small", "messages": ASK, "response_format": SCHEMA}
    with http_client(platform_server, committed_personas.alice.key) as client:
        assert client.post("/v1/chat/completions", json=body).status_code == 200
    assert _sent(upstream)["response_format"] == {"type": "json_object", "schema": OBJECT}


def test_a_provider_extra_passes_only_where_the_model_allows_it(
    platform_server, worker, committed_personas: Personas, local_small, upstream
):
    body = {"model": "local-small", "messages": ASK, "top_k": 5}
    with http_client(platform_server, committed_personas.alice.key) as client:
        refused = client.post("/v1/chat/completions", json=body)
        assert refused.status_code == 400
        assert (refused.json()["error"]["param"], refused.json()["error"]["code"]) == ("top_k", "unknown_parameter")
        _edit(local_small, extra_params=["top_k"])
        assert client.post("/v1/chat/completions", json=body).status_code == 200
    assert _sent(upstream)["top_k"] == 5


def test_the_demo_catalog_says_its_local_model_takes_json_schemas_and_no_tools(db):
    from apps.catalog.services import catalog_seed_defaults

    LLMModel.objects.filter(slug="local-small").delete()  # rolled back with the test
    assert "local-small" in catalog_seed_defaults(local_base_url="http://127.0.0.1:9/v1")
    row = LLMModel.objects.get(slug="local-small")
    assert row.provider == "llama.cpp"
    assert (row.supports_tools, row.supports_json_schema, row.supports_developer_role) == (False, True, False)


def test_a_reasoning_model_may_think_past_the_stall_timeout_and_its_thinking_is_kept(
    worker, committed_personas: Personas, local_small, upstream, settings
):
    """LLM_REQUEST_TIMEOUT_SECONDS ends a stalled stream; a reasoning model that
    is silent for longer before its first token is not stalled: it may take its
    job's deadline. What it streams as reasoning_content is kept on the job."""
    settings.LLM_REQUEST_TIMEOUT_SECONDS = 1
    settings.LLM_MAX_RETRIES = 0
    upstream.configure(latency_ms=2500, reasoning="First I weigh the options.")
    alice = committed_personas.alice
    body = {"model": "local-small", "messages": ASK}
    stalled = job_until_final(alice.client(), alice.client().post("/api/v1/jobs", body, format="json").json()["id"])
    assert stalled["status"] == "failed" and stalled["error"]["type"] == "provider_timeout"
    _edit(local_small, supports_reasoning=True)
    thought = job_until_final(alice.client(), alice.client().post("/api/v1/jobs", body, format="json").json()["id"])
    assert thought["status"] == "succeeded", thought["error"]
    assert thought["reasoning"] == "First I weigh the options."
    assert thought["output"] == "Echo: hello capabilities"


def test_models_say_what_they_serve_and_the_endpoints_hold_them_to_it(
    platform_server, worker, committed_personas: Personas, local_small, upstream
):
    import openai

    sdk = openai.OpenAI(
        base_url=f"{platform_server.url}/v1", api_key=committed_personas.alice.key, max_retries=0, timeout=20
    )
    listed = {model.id: (model.model_extra or {})["capabilities"] for model in sdk.models.list()}
    assert listed["local-small"]["chat"] is True and listed["local-small"]["embeddings"] is True
    assert listed["local-small"]["input_modalities"] == ["text"]
    assert (listed["local-small"]["max_n"], listed["local-small"]["store"]) == (1, False)
    assert listed["local-small"]["service_tiers"] == ["auto", "default"]
    # Token ids only where the model takes them.
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.embeddings.create(model="local-small", input=[[1, 2, 3]])
    assert isinstance(refused.value.body, dict) and refused.value.body["param"] == "input"
    _edit(local_small, embedding_token_input=True)
    assert len(sdk.embeddings.create(model="local-small", input=[[1, 2, 3]]).data) == 1
    # A chat-only model refuses embeddings; an embeddings-only model refuses chat.
    _edit(local_small, supports_embeddings=False)
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.embeddings.create(model="local-small", input="hello")
    assert isinstance(refused.value.body, dict) and refused.value.body["code"] == "unsupported_model"
    _edit(local_small, supports_embeddings=True, supports_chat=False)
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.chat.completions.create(model="local-small", messages=ASK)  # type: ignore[arg-type]
    assert isinstance(refused.value.body, dict) and refused.value.body["code"] == "unsupported_model"
