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


# --- Tenant admins: tiers, e-mails and key privileges are not theirs -----------


def _tenant_admin(personas: Personas) -> Client:
    from django.contrib.auth import get_user_model
    from django_tenants.utils import tenant_context

    with tenant_context(personas.alice.tenant):
        admin = get_user_model().objects.create_superuser("acme-root", "root@acme.test", "pw-tenant-1")
        client = Client(HTTP_HOST="acme.testserver")
        client.force_login(admin)
    return client


def test_a_tenant_admin_cannot_change_a_users_tier_or_email(personas: Personas):
    from django_tenants.utils import tenant_context

    from apps.accounts.models import User

    client = _tenant_admin(personas)
    alice = personas.alice
    response = client.post(
        f"/admin/accounts/user/{alice.user_id}/change/",
        {"email": "vip@globex.test", "tier": "premium", "is_active": "on"},
    )
    assert response.status_code == 302, response.content  # saved: only what the form allows
    created = client.post("/admin/accounts/user/add/", {"email": "new@acme.test", "tier": "premium", "is_active": "on"})
    assert created.status_code == 302, created.content
    with tenant_context(alice.tenant):
        user = User.objects.get(pk=alice.user_id)
        assert (user.email, user.tier) == ("alice@acme.test", "standard")
        assert User.objects.get(email="new@acme.test").tier == "standard"


def test_a_tenant_admin_cannot_make_a_key_an_admin_key_by_editing_it(personas: Personas):
    from django_tenants.utils import tenant_context

    from apps.accounts.models import ApiKey

    client = _tenant_admin(personas)
    with tenant_context(personas.alice.tenant):
        key = ApiKey.objects.get(user_id=personas.alice.user_id)
    response = client.post(f"/admin/accounts/apikey/{key.pk}/change/", {"name": "renamed", "is_admin": "on"})
    assert response.status_code == 302, response.content
    with tenant_context(personas.alice.tenant):
        key.refresh_from_db()
    assert key.name == "renamed" and key.is_admin is False
    usage = personas.alice.client().get("/api/v1/usage").json()
    assert usage["scope"] == "user"


# --- Flags: allow-lists match within the tenant; a user sees their own ----------


def _flag(**fields: Any) -> Any:
    from apps.flags.models import Flag

    defaults = {"enabled": True, "model": "routing-probe", "rollout_model": "local-small"}
    return Flag.objects.create(**{**defaults, **fields})


def test_a_platform_allow_list_entry_matches_only_the_tenant_it_names(committed_personas: Personas):
    """globex's VIP is on a platform allow-list. An acme user with the same e-mail
    (a tenant admin may create any address) is not."""
    from django_tenants.utils import tenant_context

    from apps.accounts.services import api_key_create, user_get_or_create

    _flag(key="vip-rollout", allow_users=["globex:carol@globex.test"])
    _flag(key="legacy-list", allow_users=["carol@globex.test"])  # a bare e-mail names no tenant: nobody
    body = {"model": "routing-probe", "messages": [{"role": "user", "content": "which model?"}]}
    carol = committed_personas.carol.client()
    routed = carol.post("/api/v1/jobs", body, format="json").json()
    assert routed["model"] == "local-small" and routed["flags"] == {"vip-rollout": "on"}  # legacy-list concerns nobody
    with tenant_context(committed_personas.alice.tenant):
        impostor, _ = user_get_or_create(email="carol@globex.test")
        _, raw = api_key_create(user=impostor, name="impostor")
    from rest_framework.test import APIClient

    impostor_client = APIClient(HTTP_AUTHORIZATION=f"Bearer {raw}")
    job = impostor_client.post("/api/v1/jobs", body, format="json").json()
    assert job["model"] == "routing-probe" and job["flags"] == {}  # neither flag concerns acme
    assert impostor_client.get("/api/v1/flags").json()["data"] == []
    import redis
    from django.conf import settings as django_settings

    redis.Redis.from_url(django_settings.CELERY_BROKER_URL).delete("llm.routing-probe", "llm.local-small")


def test_the_operator_admin_requires_tenant_qualified_users_in_platform_flags(db, platform):
    from django.forms.models import model_to_dict

    from apps.flags.admin import PlatformFlagForm
    from apps.flags.models import Flag

    flag = Flag(key="form-check", model="routing-probe", rollout_model="local-small")
    bare = PlatformFlagForm(data={**model_to_dict(flag), "allow_users": '["vip@globex.test"]', "deny_users": "[]"})
    assert not bare.is_valid() and "allow_users" in bare.errors
    qualified = {**model_to_dict(flag), "allow_users": '["globex:VIP@globex.test"]', "deny_users": "[]"}
    form = PlatformFlagForm(data=qualified, instance=flag)
    assert form.is_valid(), form.errors
    assert form.cleaned_data["allow_users"] == ["globex:vip@globex.test"]


def test_a_user_key_sees_only_the_flags_that_concern_its_user(committed_personas: Personas):
    from django_tenants.utils import tenant_context

    from apps.accounts.models import User
    from apps.accounts.services import api_key_create
    from apps.flags.models import Flag

    _flag(key="globex-beta", allow_tenants=["globex"])  # aimed at globex only
    _flag(key="acme-vips", allow_users=["acme:bob@acme.test"])  # bob on; acme's others are its other cohort
    _flag(key="premium-only", tier="premium", rollout_percent=100)  # alice is standard
    _flag(key="off-for-now", enabled=False, rollout_percent=100)
    with tenant_context(committed_personas.alice.tenant):
        Flag.objects.create(key="acme-own", enabled=False, model="local-small", rollout_model="premium-large")

    def listed(client: Any) -> dict[str, Any]:
        return {item["key"]: item for item in client.get("/api/v1/flags").json()["data"]}

    alice = listed(committed_personas.alice.client())
    assert set(alice) == {"acme-vips", "acme-own"}
    assert alice["acme-vips"]["on"] is False
    assert set(alice["acme-vips"]) == {"key", "scope", "on", "model", "rollout_model", "routes_to"}  # no lists
    assert listed(committed_personas.bob.client())["acme-vips"]["on"] is True
    carol = listed(committed_personas.carol.client())
    assert set(carol) == {"globex-beta", "premium-only"} and carol["globex-beta"]["on"] is True
    with tenant_context(committed_personas.alice.tenant):
        _, raw = api_key_create(user=User.objects.get(pk=committed_personas.alice.user_id), is_admin=True)
    admin_view = listed(Client(HTTP_AUTHORIZATION=f"Bearer {raw}"))
    assert set(admin_view) == {"acme-vips", "acme-own", "premium-only"}  # the tenant's view, never globex's
