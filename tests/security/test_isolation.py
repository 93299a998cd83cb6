"""Isolation, privilege and information: what one tenant (or one user) can do to,
or learn about, another."""

from __future__ import annotations

import secrets
import time
from typing import Any

from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from apps.accounts.keys import parse_bearer
from apps.llm.breaker import breaker_state
from apps.tenants import selectors
from apps.tenants.selectors import tenant_for_key_prefix
from tests.support import Personas, job_until_final

# --- The key-route cache ------------------------------------------------------


def test_random_key_prefixes_do_not_evict_real_routes(personas: Personas, settings):
    settings.API_KEY_CACHE_SECONDS = 300
    selectors.tenant_route_cache_clear()
    prefix = parse_bearer(f"Bearer {personas.alice.key}").prefix  # type: ignore[union-attr]
    assert tenant_for_key_prefix(prefix).schema_name == "acme"  # type: ignore[union-attr]
    # More unknown prefixes than either cache holds, some through the API itself.
    for _ in range(5):
        bogus = f"aip_{secrets.token_hex(6)}_{secrets.token_hex(16)}"
        assert Client(HTTP_AUTHORIZATION=f"Bearer {bogus}").get("/api/v1/jobs").status_code == 401
    for _ in range(10_050):
        assert tenant_for_key_prefix(secrets.token_hex(6)) is None
    with CaptureQueriesContext(connection) as queries:
        assert tenant_for_key_prefix(prefix).schema_name == "acme"  # type: ignore[union-attr]
    assert len(queries) == 0  # still cached
    assert len(selectors._miss_cache) <= selectors.MISS_CACHE_SIZE  # and the misses stay bounded


# --- A model's shared circuit breaker -----------------------------------------

CHAT = {"model": "local-small", "messages": [{"role": "user", "content": "hello"}]}


def _run(client: Any) -> dict[str, Any]:
    return job_until_final(client, client.post("/api/v1/jobs", CHAT, format="json").json()["id"], timeout=30)


def test_another_tenants_bad_requests_neither_close_nor_hold_a_failing_models_breaker(
    worker, committed_personas: Personas, upstream, settings
):
    """The model is down and its breaker open. After the cooldown, globex's
    requests that the provider refuses as bad (400, 413, 422) take the half-open
    probe: they must not close the breaker (acme's jobs would then queue on a dead
    provider), nor keep the probe (the model would stay skipped)."""
    settings.BREAKER_FAILURES = 2
    settings.BREAKER_COOLDOWN_SECONDS = 1
    alice, carol = committed_personas.alice.client(), committed_personas.carol.client()
    upstream.add_faults({"model": "local-small", "status": 503, "message": "down", "times": 2})
    assert _run(alice)["status"] == "failed"
    assert _run(alice)["status"] == "failed"
    assert breaker_state("local-small").state == "open"
    time.sleep(1.1)  # the cooldown: half-open
    for status in (400, 413, 422):
        upstream.add_faults({"model": "local-small", "status": status, "message": "your request is wrong"})
        refused = _run(carol)
        assert refused["attempts"][0]["provider_status"] == status  # it reached the provider (it had the probe)
        assert breaker_state("local-small").state == "half-open"
    upstream.add_faults({"model": "local-small", "status": 503, "message": "still down"})
    assert _run(alice)["attempts"][0]["provider_status"] == 503  # a real probe: the provider is still down
    assert breaker_state("local-small").state == "open"


def test_bad_requests_are_not_calls_of_the_breakers_window(worker, committed_personas: Personas, upstream, settings):
    """Two provider failures among two real calls open the breaker (ratio 0.5),
    however many bad requests another tenant sent in the same window."""
    settings.BREAKER_FAILURES = 2
    settings.BREAKER_FAILURE_RATIO = 0.5
    alice, carol = committed_personas.alice.client(), committed_personas.carol.client()
    upstream.add_faults({"model": "local-small", "status": 400, "message": "your request is wrong", "times": 4})
    for _ in range(4):
        assert _run(carol)["status"] == "failed"
    upstream.add_faults({"model": "local-small", "status": 503, "message": "down", "times": 2})
    assert _run(alice)["status"] == "failed"
    assert _run(alice)["status"] == "failed"
    assert breaker_state("local-small").state == "open"


def _model_level(slug: str) -> float:
    import redis
    from django.conf import settings as django_settings

    return float(redis.Redis.from_url(django_settings.REDIS_URL).hget(f"aip:rl:model:{slug}", "tokens") or "nan")


def test_a_failed_calls_tokens_go_back_to_the_models_shared_bucket(worker, committed_personas: Personas, upstream):
    """A tenant whose requests the provider refuses cannot drain the model's
    provider-wide TPM bucket: chat jobs and /v1/embeddings give their tokens back."""
    from apps.catalog.models import LLMModel

    LLMModel.objects.filter(slug="local-small").update(tokens_per_minute=6000)  # capacity 6000, 100 a second
    try:
        carol = committed_personas.carol.client()
        upstream.add_faults({"model": "local-small", "status": 400, "message": "your request is wrong"})
        body = {**CHAT, "max_tokens": 1000}
        job = job_until_final(carol, carol.post("/api/v1/jobs", body, format="json").json()["id"], timeout=30)
        assert job["status"] == "failed"
        assert _model_level("local-small") >= 6000 - 5  # the ~1010 it held came back
        upstream.add_faults(
            {"model": "local-small", "status": 422, "message": "your input is wrong", "endpoint": "embeddings"}
        )
        refused = carol.post("/v1/embeddings", {"model": "local-small", "input": "x " * 2000}, format="json")
        assert refused.status_code >= 400, refused.content
        assert _model_level("local-small") >= 6000 - 5
    finally:
        LLMModel.objects.filter(slug="local-small").update(tokens_per_minute=None)


# --- Hosts: the operator admin and /metrics -----------------------------------


def test_an_unknown_host_gets_the_api_but_never_the_operator_admin(platform_server, committed_personas: Personas):
    from tests.support import http_client

    with http_client(platform_server) as anonymous:
        for host in ("evil.example", "127.0.0.1", "testserver.evil.example"):
            anonymous.headers["Host"] = host
            assert anonymous.get("/admin/login/").status_code == 404, host
            assert anonymous.get("/admin/").status_code == 404, host
        anonymous.headers["Host"] = "testserver"  # PUBLIC_DOMAIN in tests
        assert anonymous.get("/admin/login/").status_code == 200
    with http_client(platform_server, committed_personas.alice.key) as alice:
        alice.headers["Host"] = "evil.example"
        assert alice.get("/api/v1/jobs").status_code == 200  # the API answers on any host


def test_another_domain_of_the_public_schema_is_not_the_operators(personas: Personas):
    from apps.tenants.models import Domain
    from apps.tenants.services import public_tenant_ensure

    public = public_tenant_ensure(domain="testserver")
    Domain.objects.create(domain="alias.example", tenant=public, is_primary=False)
    assert Client(HTTP_HOST="alias.example").get("/admin/login/").status_code == 404
    assert Client(HTTP_HOST="testserver").get("/admin/login/").status_code == 200


def test_metrics_answer_loopback_clients_on_the_public_domain_or_a_token_anywhere(committed_db, settings):
    settings.METRICS_TOKEN = ""
    assert Client().get("/metrics").status_code == 200  # testserver, from 127.0.0.1
    assert Client(REMOTE_ADDR="203.0.113.9").get("/metrics").status_code == 403
    assert Client(REMOTE_ADDR="203.0.113.9", HTTP_X_FORWARDED_FOR="127.0.0.1").get("/metrics").status_code == 403
    assert Client(HTTP_HOST="evil.example").get("/metrics").status_code == 404
    assert Client(HTTP_HOST="acme.testserver").get("/metrics").status_code == 404
    settings.METRICS_TOKEN = "scrape-secret"
    bearer = {"HTTP_AUTHORIZATION": "Bearer scrape-secret"}
    assert Client(HTTP_HOST="web", REMOTE_ADDR="10.1.2.3", **bearer).get("/metrics").status_code == 200
    assert Client(HTTP_HOST="web", REMOTE_ADDR="10.1.2.3").get("/metrics").status_code == 401
    assert Client().get("/metrics").status_code == 401  # a token, once set, is required of everyone
    assert Client(HTTP_HOST="acme.testserver", **bearer).get("/metrics").status_code == 404  # never a tenant's


def test_flower_and_worker_metrics_listen_on_loopback_unless_configured():
    from pathlib import Path

    from devtools.run import expand, parse_procfile

    root = Path(__file__).resolve().parents[2]
    procfile = parse_procfile(root / "Procfile")
    assert "--address=127.0.0.1" in expand(procfile["flower"], {})
    assert "--address=0.0.0.0" in expand(procfile["flower"], {"FLOWER_HOST": "0.0.0.0"})
    compose = (root / "docker" / "compose.yaml").read_text()
    assert '"${FLOWER_PUBLISH:-127.0.0.1}:5555:5555"' in compose
    observability = (root / "apps" / "observability" / "celery.py").read_text()
    assert 'os.environ.get("WORKER_METRICS_HOST", "127.0.0.1")' in observability
