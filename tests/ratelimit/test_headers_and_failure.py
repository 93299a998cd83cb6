"""What callers are told about their limits (OpenAI's `x-ratelimit-*` headers on
the jobs API and /v1, with the official SDK), request limits beside token
limits, embeddings paying the same buckets, and what happens when the limiter's
Redis is unreachable: closed (503) unless the tenant is set to fail open."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator

import openai
import pytest
import redis
from django.conf import settings
from django_tenants.utils import tenant_context
from openai.types.chat import ChatCompletionChunk, ChatCompletionMessageParam

from apps.controls.models import RateLimit
from apps.jobs.models import Job
from apps.llm.tokens import count_message_tokens
from apps.ratelimit import buckets
from apps.ratelimit.models import UserRateLimit
from apps.tenants.models import Tenant
from tests.support import Personas

MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "count my tokens"}]
PROMPT = count_message_tokens(MESSAGES)
RESET = re.compile(r"^(\d+ms|(\d+m)?\d+(\.\d+)?s)$")


def _forget_broker_queue() -> None:
    redis.Redis.from_url(settings.CELERY_BROKER_URL).delete("llm.routing-probe")


def test_jobs_api_reports_the_tightest_bucket_on_every_response(committed_personas: Personas):
    alice = committed_personas.alice
    RateLimit.objects.create(tier="standard", tokens_per_minute=60_000, burst_tokens=50_000)
    with tenant_context(alice.tenant):
        # The user's own limit replaces the tier's; the tenant's is larger than it.
        UserRateLimit.objects.create(user_id=alice.user_id, tokens_per_minute=6000, burst_tokens=1000)
    RateLimit.objects.create(tenant=alice.tenant, tokens_per_minute=600_000, requests_per_minute=3)
    client = alice.client()
    body = {"model": "routing-probe", "messages": MESSAGES, "max_tokens": 200}
    first = client.post("/api/v1/jobs", body, format="json")
    assert first.status_code == 202
    assert first["x-ratelimit-limit-tokens"] == "1000"  # the user's burst: the tightest
    remaining = int(first["x-ratelimit-remaining-tokens"])
    assert 1000 - PROMPT - 200 <= remaining <= 1000 - PROMPT - 200 + 2
    # Refilling 100 tokens/s, the taken tokens are back in about (PROMPT + 200) / 100 s.
    assert RESET.match(first["x-ratelimit-reset-tokens"]), first["x-ratelimit-reset-tokens"]
    assert first["x-ratelimit-reset-tokens"].startswith("2.")
    # The tenant limits requests too: 3 per minute, one taken.
    assert first["x-ratelimit-limit-requests"] == "3"
    assert first["x-ratelimit-remaining-requests"] == "2"
    assert RESET.match(first["x-ratelimit-reset-requests"])

    # A poll takes nothing but still reports the buckets as they stand.
    polled = client.get(f"/api/v1/jobs/{first.json()['id']}")
    assert polled.status_code == 200
    assert remaining <= int(polled["x-ratelimit-remaining-tokens"]) <= 1000
    assert polled["x-ratelimit-remaining-requests"] == "2"
    listed = client.get("/api/v1/jobs")
    assert listed["x-ratelimit-limit-tokens"] == "1000"
    # So does a request refused before admission (a bad field).
    invalid = client.post("/api/v1/jobs", {**body, "max_tokens": -1}, format="json")
    assert invalid.status_code == 400 and invalid["x-ratelimit-limit-requests"] == "3"

    assert client.post("/api/v1/jobs", body, format="json").status_code == 202
    assert client.post("/api/v1/jobs", body, format="json").status_code == 202
    refused = client.post("/api/v1/jobs", body, format="json")
    assert refused.status_code == 429
    assert "your organisation's request rate limit (3 requests/min)" in refused.json()["error"]["message"]
    assert refused["x-ratelimit-remaining-requests"] == "0"
    assert 1 <= int(refused["Retry-After"]) <= 20  # one request refills in 20 s
    _forget_broker_queue()


def test_v1_chat_completions_carry_the_headers_through_the_sdk(platform_server, worker, committed_personas: Personas):
    alice = committed_personas.alice
    RateLimit.objects.create(tenant=alice.tenant, tokens_per_minute=60_000, burst_tokens=20_000)
    sdk = openai.OpenAI(base_url=f"{platform_server.url}/v1", api_key=alice.key, max_retries=0, timeout=20)
    raw = sdk.chat.completions.with_raw_response.create(model="local-small", messages=MESSAGES, max_tokens=50)
    assert raw.parse().choices[0].message.content
    assert raw.headers["x-ratelimit-limit-tokens"] == "20000"
    assert 20_000 - PROMPT - 50 <= int(raw.headers["x-ratelimit-remaining-tokens"]) < 20_000 - PROMPT - 45
    assert RESET.match(raw.headers["x-ratelimit-reset-tokens"])
    assert "x-ratelimit-limit-requests" not in raw.headers  # no request limit is configured

    with sdk.chat.completions.with_streaming_response.create(
        model="local-small", messages=MESSAGES, max_tokens=50, stream=True
    ) as streamed:
        assert streamed.headers["x-ratelimit-limit-tokens"] == "20000"
        assert int(streamed.headers["x-ratelimit-remaining-tokens"]) < 20_000 - PROMPT - 45
        chunks = [chunk for chunk in streamed.parse() if isinstance(chunk, ChatCompletionChunk)]
        assert any(chunk.choices and chunk.choices[0].delta.content for chunk in chunks)

    # A user limit of one such call at a time (the echo answers far below max_tokens):
    # once a call has settled, the next full-size one must wait.
    burst = PROMPT + 1005
    with tenant_context(alice.tenant):
        UserRateLimit.objects.create(user_id=alice.user_id, tokens_per_minute=60, burst_tokens=burst)
    sdk.chat.completions.create(model="local-small", messages=MESSAGES, max_tokens=1000)
    with pytest.raises(openai.RateLimitError) as refused:
        sdk.chat.completions.create(model="local-small", messages=MESSAGES, max_tokens=1000)
    assert refused.value.response.headers["x-ratelimit-limit-tokens"] == str(burst)
    assert int(refused.value.response.headers["retry-after"]) >= 1
    assert refused.value.code == "rate_limit_exceeded"


def test_embeddings_pay_the_same_token_buckets(platform_server, worker, committed_personas: Personas):
    alice = committed_personas.alice
    RateLimit.objects.create(tenant=alice.tenant, tokens_per_minute=60, burst_tokens=30)
    sdk = openai.OpenAI(base_url=f"{platform_server.url}/v1", api_key=alice.key, max_retries=0, timeout=20)
    raw = sdk.embeddings.with_raw_response.create(model="local-small", input="one two three four five")
    assert raw.headers["x-ratelimit-limit-tokens"] == "30"
    assert int(raw.headers["x-ratelimit-remaining-tokens"]) <= 25
    with pytest.raises(openai.RateLimitError):
        sdk.embeddings.create(model="local-small", input=" ".join(["word"] * 28))


@pytest.fixture
def limiter_unreachable(settings) -> Iterator[None]:
    """The limiter's Redis (RATE_LIMIT_REDIS_URL) is down; the platform's is not."""
    settings.RATE_LIMIT_REDIS_URL = "redis://127.0.0.1:9/0"  # discard port: nothing listens
    settings.RATE_LIMIT_REDIS_TIMEOUT_SECONDS = 0.2
    buckets.limiter_redis.cache_clear()
    buckets._script.cache_clear()
    yield
    buckets.limiter_redis.cache_clear()
    buckets._script.cache_clear()


def test_unreachable_limiter_fails_closed_unless_the_tenant_fails_open(
    committed_personas: Personas, limiter_unreachable: None, caplog: pytest.LogCaptureFixture
):
    alice = committed_personas.alice
    RateLimit.objects.create(tenant=alice.tenant, tokens_per_minute=60_000)
    client = alice.client()
    body = {"model": "routing-probe", "messages": MESSAGES, "max_tokens": 50}
    with caplog.at_level(logging.WARNING, logger="apps.ratelimit.limits"):
        closed = client.post("/api/v1/jobs", body, format="json")
    assert closed.status_code == 503
    assert closed.json()["error"]["code"] == "ratelimit_unavailable"
    assert [
        getattr(r, "outcome", None) for r in caplog.records if getattr(r, "event", "") == "ratelimit_unavailable"
    ] == ["fail_closed"]
    with tenant_context(alice.tenant):
        assert not Job.objects.exists()  # nothing was stored or enqueued

    Tenant.objects.filter(pk=alice.tenant.pk).update(ratelimit_fail_open=True)
    caplog.clear()
    try:
        with caplog.at_level(logging.WARNING, logger="apps.ratelimit.limits"):
            opened = client.post("/api/v1/jobs", body, format="json")
    finally:
        Tenant.objects.filter(pk=alice.tenant.pk).update(ratelimit_fail_open=False)
    assert opened.status_code == 202, opened.json()
    assert not any(name.startswith("x-ratelimit-") for name in opened.headers)  # nothing could be measured
    assert [
        getattr(r, "outcome", None) for r in caplog.records if getattr(r, "event", "") == "ratelimit_unavailable"
    ] == ["fail_open"]
    with tenant_context(alice.tenant):
        assert Job.objects.get(pk=opened.json()["id"]).ratelimit_tokens == 0  # nothing to reconcile later
    _forget_broker_queue()
