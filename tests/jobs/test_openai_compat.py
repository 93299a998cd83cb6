"""The official openai SDK, unchanged but for base_url and key, against the live
platform (uvicorn, real worker, real upstream)."""

from __future__ import annotations

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.support import Personas

MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "alpha beta gamma"}]


@pytest.fixture
def sdk(platform_server, worker, committed_personas: Personas) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{platform_server.url}/v1", api_key=committed_personas.alice.key, max_retries=0, timeout=20
    )


def test_models_list_shows_the_enabled_models(sdk: openai.OpenAI):
    ids = {model.id for model in sdk.models.list()}
    assert {"local-small", "premium-large"} <= ids
    assert sdk.models.retrieve("local-small").id == "local-small"


def test_non_stream_completion(sdk: openai.OpenAI, committed_personas: Personas):
    raw = sdk.chat.completions.with_raw_response.create(model="local-small", messages=MESSAGES, max_tokens=20)
    completion = raw.parse()
    assert completion.object == "chat.completion"
    assert completion.choices[0].message.content == "Echo: alpha beta gamma"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.completion_tokens > 0
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens
    job_id = raw.headers["x-aip-job-id"]
    job = committed_personas.alice.client().get(f"/api/v1/jobs/{job_id}").json()
    assert job["status"] == "succeeded"
    assert job["output"] == completion.choices[0].message.content


def test_stream_with_include_usage(sdk: openai.OpenAI, upstream):
    upstream.configure(chunk_delay_ms=10)
    chunks = list(
        sdk.chat.completions.create(
            model="local-small", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
    )
    assert all(chunk.object == "chat.completion.chunk" for chunk in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text == "Echo: alpha beta gamma"
    finish = [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices and chunk.choices[0].finish_reason]
    assert finish == ["stop"]
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_stream_without_include_usage_has_no_usage_chunk(sdk: openai.OpenAI):
    chunks = list(sdk.chat.completions.create(model="local-small", messages=MESSAGES, stream=True))
    assert all(chunk.usage is None for chunk in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_bad_key_raises_authentication_error(platform_server, committed_db):
    client = openai.OpenAI(base_url=f"{platform_server.url}/v1", api_key="aip_0000000000_wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model="local-small", messages=MESSAGES)
    with pytest.raises(openai.AuthenticationError):
        client.models.list()


def test_unknown_model_raises_not_found(sdk: openai.OpenAI):
    with pytest.raises(openai.NotFoundError) as excinfo:
        sdk.chat.completions.create(model="gpt-9", messages=MESSAGES)
    assert excinfo.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        sdk.models.retrieve("gpt-9")


def test_invalid_parameter_raises_bad_request_naming_it(sdk: openai.OpenAI):
    with pytest.raises(openai.BadRequestError) as excinfo:
        sdk.chat.completions.create(model="local-small", messages=MESSAGES, temperature=7)
    assert excinfo.value.param == "temperature"


def test_provider_rate_limit_surfaces_as_rate_limit_error(sdk: openai.OpenAI, upstream):
    upstream.add_faults({"model": "local-small", "status": 429, "message": "slow down"})
    with pytest.raises(openai.RateLimitError):
        sdk.chat.completions.create(model="local-small", messages=MESSAGES)


def test_provider_failure_is_a_502_keeping_the_providers_message(sdk: openai.OpenAI, upstream):
    upstream.add_faults({"model": "local-small", "status": 500, "message": "upstream exploded"})
    with pytest.raises(openai.InternalServerError) as excinfo:
        sdk.chat.completions.create(model="local-small", messages=MESSAGES)
    assert excinfo.value.status_code == 502
    assert excinfo.value.code == "provider_error"
    assert "upstream exploded" in str(excinfo.value.message)
    assert excinfo.value.response.headers["x-aip-job-id"]


def test_failure_mid_stream_raises_in_the_sdk(sdk: openai.OpenAI, upstream):
    upstream.add_faults({"model": "local-small", "kind": "cut_stream", "after_chunks": 2})
    with pytest.raises(openai.APIError):
        list(sdk.chat.completions.create(model="local-small", messages=MESSAGES, stream=True))


def test_embeddings_pass_through_to_the_provider(sdk: openai.OpenAI, upstream):
    response = sdk.embeddings.create(model="local-small", input=["hello", "world"], dimensions=8)
    assert [item.index for item in response.data] == [0, 1]
    assert len(response.data[0].embedding) == 8
    assert response.data[0].embedding != response.data[1].embedding
    assert response.model == "local-small"
    assert upstream.stats()["embeddings_per_model"]["local-small"] == 1
    with pytest.raises(openai.NotFoundError):
        sdk.embeddings.create(model="gpt-9", input="hello")
    with pytest.raises(openai.BadRequestError) as excinfo:
        sdk.embeddings.create(model="local-small", input="")
    assert excinfo.value.param == "input"


def test_non_stream_wait_is_bounded_and_names_the_job(sdk: openai.OpenAI, settings, committed_personas: Personas):
    """No worker consumes routing-probe: the call gives up after V1_WAIT_TIMEOUT_SECONDS
    with a 504 that carries the job id, and the job itself is still there to poll."""
    import redis

    settings.V1_WAIT_TIMEOUT_SECONDS = 1
    with pytest.raises(openai.InternalServerError) as excinfo:
        sdk.chat.completions.create(model="routing-probe", messages=MESSAGES)
    assert excinfo.value.status_code == 504
    job_id = excinfo.value.response.headers["x-aip-job-id"]
    assert committed_personas.alice.client().get(f"/api/v1/jobs/{job_id}").json()["status"] == "queued"
    redis.Redis.from_url(settings.REDIS_URL).delete("llm.routing-probe")
