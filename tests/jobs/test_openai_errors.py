"""What OpenAI's SDKs and the frameworks on them expect of errors and retries,
against the live platform, the real worker and an upstream that fails on cue:
a request the provider refuses keeps its status, code, param and message and is
neither retried nor failed over; a provider that refuses the platform itself is
the operator's (502, failed over); account ids never reach the tenant; answers an
SDK would retry while its job runs say not to; a retry with an Idempotency-Key
is the same job; a stream its client closes cancels its job; the cost shows."""

from __future__ import annotations

import logging
import time
from decimal import ROUND_CEILING, Decimal
from typing import Any

import httpx
import openai
import pytest
import redis
from django.conf import settings as django_settings
from django.db.models import Sum
from django_tenants.utils import tenant_context

from apps.billing.models import LedgerEntry
from apps.catalog.models import LLMModel
from apps.catalog.selectors import catalog_cache_clear
from apps.controls.models import FallbackPolicy
from apps.jobs.models import Job, JobStatus
from tests.support import Personas, http_client, wait_for

ASK: list[Any] = [{"role": "user", "content": "hello errors"}]


@pytest.fixture
def sdk(platform_server, worker, committed_personas: Personas) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{platform_server.url}/v1", api_key=committed_personas.alice.key, max_retries=0, timeout=20
    )


def _chat_calls(upstream: Any, model: str = "local-small") -> int:
    return int(upstream.stats()["chat_per_model"].get(model, 0))


def test_a_request_the_provider_refuses_keeps_its_status_code_param_and_message(sdk: openai.OpenAI, upstream):
    upstream.add_faults(
        {"status": 400, "message": "'seed' is out of range", "code": "invalid_value", "param": "seed", "times": 5}
    )
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.chat.completions.create(model="local-small", messages=ASK, seed=5)
    error = refused.value.body
    assert isinstance(error, dict)
    assert (error["code"], error["param"], error["message"]) == ("invalid_value", "seed", "'seed' is out of range")
    assert _chat_calls(upstream) == 1  # not retried


def test_a_refused_request_is_not_failed_over(platform_server, worker, committed_personas: Personas, upstream):
    FallbackPolicy.objects.create(tier="premium", chain=["premium-large", "local-small"])
    carol = committed_personas.carol  # premium tier
    upstream.add_faults({"model": "premium-large", "status": 422, "message": "unprocessable", "times": 5})
    client = openai.OpenAI(base_url=f"{platform_server.url}/v1", api_key=carol.key, max_retries=0, timeout=20)
    with pytest.raises(openai.UnprocessableEntityError):
        client.chat.completions.create(model="premium-large", messages=ASK)
    assert _chat_calls(upstream, "local-small") == 0  # the fallback would refuse it too


def test_a_provider_refusing_the_platform_is_502_fails_over_and_alerts(
    platform_server, worker, committed_personas: Personas, upstream, caplog
):
    FallbackPolicy.objects.create(tier="premium", chain=["premium-large", "local-small"])
    carol = committed_personas.carol
    upstream.add_faults(
        {"model": "premium-large", "status": 401, "message": "Incorrect API key sk-abc123456789 for org-Xy12345678"}
    )
    client = openai.OpenAI(base_url=f"{platform_server.url}/v1", api_key=carol.key, max_retries=0, timeout=20)
    with caplog.at_level(logging.ERROR, logger="apps.llm.providers"):
        answered = client.chat.completions.create(model="premium-large", messages=ASK)
    assert answered.model == "local-small"  # the model that answered: the fallback
    assert any(getattr(r, "event", "") == "upstream_misconfigured" for r in caplog.records)
    # Without a fallback the caller gets a 502 that names no account of ours.
    upstream.add_faults({"model": "local-small", "status": 403, "message": "org-Xy12345678 may not use this model"})
    alice = openai.OpenAI(
        base_url=f"{platform_server.url}/v1", api_key=committed_personas.alice.key, max_retries=0, timeout=20
    )
    with pytest.raises(openai.InternalServerError) as failed:
        alice.chat.completions.create(model="local-small", messages=ASK)
    assert failed.value.status_code == 502
    assert isinstance(failed.value.body, dict) and failed.value.body["code"] == "upstream_misconfigured"
    assert "org-" not in str(failed.value.body)


def test_a_providers_rate_limit_stays_a_429_with_its_retry_after_and_no_account_ids(
    sdk: openai.OpenAI, upstream, settings
):
    settings.LLM_MAX_RETRIES = 0
    upstream.add_faults(
        {"status": 429, "message": "Rate limit reached in organization org-Ab12345678 on tokens", "retry_after": 7}
    )
    with pytest.raises(openai.RateLimitError) as limited:
        sdk.chat.completions.create(model="local-small", messages=ASK)
    assert limited.value.response.headers["retry-after"] == "7"
    assert "org-Ab12345678" not in limited.value.message and "[redacted]" in limited.value.message


def test_context_over_the_window_is_400_context_length_exceeded(sdk: openai.OpenAI):
    huge: Any = [{"role": "user", "content": " ".join(["word"] * 5000)}]
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.chat.completions.create(model="local-small", messages=huge)
    assert isinstance(refused.value.body, dict) and refused.value.body["code"] == "context_length_exceeded"


def test_a_request_no_rate_limit_could_take_is_400_on_v1(sdk: openai.OpenAI, committed_personas: Personas):
    from apps.ratelimit.models import UserRateLimit

    alice = committed_personas.alice
    with tenant_context(alice.tenant):
        UserRateLimit.objects.create(user_id=alice.user_id, tokens_per_minute=60, burst_tokens=50)
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.chat.completions.create(model="local-small", messages=ASK, max_tokens=500)
    assert isinstance(refused.value.body, dict) and refused.value.body["code"] == "rate_limit_too_large"


def test_a_wait_that_runs_out_says_not_to_retry(platform_server, committed_personas: Personas, settings):
    settings.V1_WAIT_TIMEOUT_SECONDS = 1
    with http_client(platform_server, committed_personas.alice.key) as client:
        response = client.post("/v1/chat/completions", json={"model": "routing-probe", "messages": ASK})
    assert response.status_code == 504
    assert response.headers["x-should-retry"] == "false"  # the job it made still runs
    redis.Redis.from_url(django_settings.CELERY_BROKER_URL).delete("llm.routing-probe")  # no worker serves it


def test_an_idempotency_key_makes_a_retry_the_same_job(sdk: openai.OpenAI, upstream):
    first = sdk.chat.completions.with_raw_response.create(
        model="local-small", messages=ASK, extra_headers={"Idempotency-Key": "retry-1"}
    )
    again = sdk.chat.completions.with_raw_response.create(
        model="local-small", messages=ASK, extra_headers={"Idempotency-Key": "retry-1"}
    )
    assert again.headers["x-aip-job-id"] == first.headers["x-aip-job-id"]
    assert again.parse().choices[0].message.content == first.parse().choices[0].message.content
    assert _chat_calls(upstream) == 1


def test_closing_a_v1_stream_cancels_its_job(platform_server, worker, committed_personas: Personas, upstream):
    upstream.configure(chunk_delay_ms=200, reply=" ".join(f"w{i}" for i in range(200)))
    alice = committed_personas.alice
    body = {"model": "local-small", "messages": ASK, "stream": True}
    with (
        httpx.Client(base_url=platform_server.url, headers={"Authorization": f"Bearer {alice.key}"}) as client,
        client.stream("POST", "/v1/chat/completions", json=body) as response,
    ):
        job_id = response.headers["x-aip-job-id"]
        for line in response.iter_lines():
            if '"content":"' in line and '"content":""' not in line:
                break  # text is streaming: the user presses Stop

    def cancelled() -> bool:
        with tenant_context(alice.tenant):
            return Job.objects.get(pk=job_id).status == JobStatus.CANCELLED

    wait_for(cancelled)
    time.sleep(0.5)
    with tenant_context(alice.tenant):
        job = Job.objects.get(pk=job_id)
    assert job.output_tokens is not None and job.output_tokens < 200  # charged for what streamed, no more


def test_every_job_shows_its_cost_and_v1_answers_carry_it(sdk: openai.OpenAI, upstream, committed_personas: Personas):
    LLMModel.objects.filter(slug="local-small").update(
        input_price_per_mtok=Decimal("1"),
        output_price_per_mtok=Decimal("2"),
        cached_input_price_per_mtok=Decimal("0.5"),
    )
    catalog_cache_clear()
    upstream.configure(usage_details={"cached_tokens": 2, "reasoning_tokens": 3})
    try:
        raw = sdk.chat.completions.with_raw_response.create(model="local-small", messages=ASK)
        completion = raw.parse()
        usage = completion.usage
        assert usage is not None and usage.prompt_tokens_details and usage.completion_tokens_details
        assert usage.prompt_tokens_details.cached_tokens == 2
        assert usage.completion_tokens_details.reasoning_tokens == 3
        # $1/M input, of which 2 cached at $0.5/M, $2/M output: micro-dollars, rounded up.
        micros = Decimal(usage.prompt_tokens - 2) + Decimal("0.5") * 2 + 2 * usage.completion_tokens
        expected = int(micros.to_integral_value(rounding=ROUND_CEILING))
        alice = committed_personas.alice
        with tenant_context(alice.tenant):
            charged = LedgerEntry.objects.filter(job_id=raw.headers["x-aip-job-id"]).aggregate(c=Sum("cost_micros"))
        assert charged["c"] == expected
        cost = f"{Decimal(expected) / 1_000_000:.6f}"
        assert raw.headers["x-aip-cost-usd"] == cost
        job = alice.client().get(f"/api/v1/jobs/{raw.headers['x-aip-job-id']}").json()
        assert job["cost_usd"] == cost
        assert (job["usage"]["cached_input_tokens"], job["usage"]["reasoning_tokens"]) == (2, 3)
        chunks = list(
            sdk.chat.completions.create(
                model="local-small", messages=ASK, stream=True, stream_options={"include_usage": True}
            )
        )
        assert chunks[-1].usage is not None
        assert (chunks[-1].usage.model_extra or {})["cost_usd"] == cost
    finally:
        LLMModel.objects.filter(slug="local-small").update(
            input_price_per_mtok=Decimal("0.150000"),
            output_price_per_mtok=Decimal("0.600000"),
            cached_input_price_per_mtok=None,
        )
        catalog_cache_clear()
