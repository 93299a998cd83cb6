"""Token rate limits at admission: 429 with an honest Retry-After naming the
bucket, 413 for a request no bucket could ever take, reconciliation after the
call, and one limit shared by two web servers."""

from __future__ import annotations

import redis
from django.conf import settings
from django_tenants.utils import tenant_context

from apps.catalog.selectors import model_get
from apps.controls.models import RateLimit
from apps.llm.tokens import count_message_tokens
from apps.ratelimit.models import UserRateLimit
from devtools.serve import ThreadedUvicorn
from tests.support import Personas, http_client, job_until_final

MESSAGES = [{"role": "user", "content": "count my tokens"}]


def _tokens(max_tokens: int) -> int:
    return count_message_tokens(MESSAGES) + max_tokens


def _level(key: str) -> float:
    return float(redis.Redis.from_url(settings.REDIS_URL).hget(key, "tokens") or "nan")


def test_user_limit_refuses_with_429_naming_it_and_413_for_what_can_never_pass(committed_personas: Personas):
    alice = committed_personas.alice
    with tenant_context(alice.tenant):
        UserRateLimit.objects.create(user_id=alice.user_id, tokens_per_minute=60, burst_tokens=_tokens(500) + 10)
    client = alice.client()
    body = {"model": "routing-probe", "messages": MESSAGES, "max_tokens": 500}
    assert client.post("/api/v1/jobs", body, format="json").status_code == 202
    refused = client.post("/api/v1/jobs", body, format="json")
    assert refused.status_code == 429
    error = refused.json()["error"]
    assert error["code"] == "rate_limit_exceeded"
    assert "your token rate limit (60 tokens/min" in error["message"]
    # 1 token/s refill, about `_tokens(500) - 10` short: the wait says so.
    assert _tokens(500) - 12 <= int(refused["Retry-After"]) <= _tokens(500) - 8
    too_big = client.post("/api/v1/jobs", {**body, "max_tokens": 1000}, format="json")
    assert too_big.status_code == 413
    assert too_big.json()["error"]["code"] == "rate_limit_too_large"
    redis.Redis.from_url(settings.CELERY_BROKER_URL).delete("llm.routing-probe")


def test_tenant_bucket_refusing_debits_no_user_bucket_and_unused_tokens_come_back(
    worker, committed_personas: Personas, upstream
):
    alice = committed_personas.alice
    RateLimit.objects.create(tier="standard", tokens_per_minute=6000, burst_tokens=5000)
    RateLimit.objects.create(tenant=alice.tenant, tokens_per_minute=60, burst_tokens=_tokens(1000) + 5)
    client = alice.client()
    body = {"model": "local-small", "messages": MESSAGES, "max_tokens": 1000}
    job = job_until_final(client, client.post("/api/v1/jobs", body, format="json").json()["id"])
    assert job["status"] == "succeeded"
    used = job["usage"]["input_tokens"] + job["usage"]["output_tokens"]
    user_key = f"aip:{{acme}}:rl:user:{alice.user_id}"
    tenant_key = "aip:{acme}:rl:tenant"
    # Reconciled: only what the call used stays taken (plus a little refill).
    assert 5000 - used - 1 <= _level(user_key) <= 5000
    assert _tokens(1000) + 5 - used - 1 <= _level(tenant_key) <= _tokens(1000) + 5
    # A request the tenant bucket cannot take now is refused without touching the user's.
    user_before = _level(user_key)
    refused = client.post("/api/v1/jobs", {**body, "max_tokens": 1000}, format="json")
    if refused.status_code == 202:  # the tenant bucket had refilled enough: spend it once more
        job_until_final(client, refused.json()["id"])
        refused = client.post("/api/v1/jobs", {**body, "max_tokens": 1000}, format="json")
        user_before = _level(user_key)
    assert refused.status_code == 429
    assert "organisation's token rate limit" in refused.json()["error"]["message"]
    assert _level(user_key) >= user_before  # refilled, never debited


def test_two_web_servers_share_one_limit(platform_server, committed_personas: Personas):
    from aiplatform.asgi import Router

    bob = committed_personas.bob
    with tenant_context(bob.tenant):
        UserRateLimit.objects.create(user_id=bob.user_id, tokens_per_minute=60, burst_tokens=_tokens(300) * 2 + 5)
    second = ThreadedUvicorn(Router(), name="platform-2")
    second.start()
    try:
        body = {"model": "routing-probe", "messages": MESSAGES, "max_tokens": 300}
        statuses = []
        for server in (platform_server, second, platform_server, second):
            with http_client(server, bob.key) as client:
                statuses.append(client.post("/api/v1/jobs", json=body).status_code)
        assert statuses == [202, 202, 429, 429]
    finally:
        second.stop()
    assert model_get("routing-probe") is not None
    redis.Redis.from_url(settings.CELERY_BROKER_URL).delete("llm.routing-probe")


def test_a_cancelled_queued_job_gives_its_tokens_back(committed_personas: Personas):
    carol = committed_personas.carol
    with tenant_context(carol.tenant):
        UserRateLimit.objects.create(user_id=carol.user_id, tokens_per_minute=60, burst_tokens=_tokens(500) + 10)
    client = carol.client()
    body = {"model": "routing-probe", "messages": MESSAGES, "max_tokens": 500}
    job = client.post("/api/v1/jobs", body, format="json").json()
    assert client.post("/api/v1/jobs", body, format="json").status_code == 429
    assert client.post(f"/api/v1/jobs/{job['id']}/cancel").status_code == 200
    assert client.post("/api/v1/jobs", body, format="json").status_code == 202  # the tokens came back
    redis.Redis.from_url(settings.CELERY_BROKER_URL).delete("llm.routing-probe")
