"""Kill switches at four levels: checked at admission and again in the worker,
toggled from the admin and a command, every flip audited."""

from __future__ import annotations

import io

import openai
import pytest
import redis
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from django.test import Client
from django_tenants.utils import schema_context, tenant_context

from apps.controls.models import KillSwitch, KillSwitchEvent, SwitchLevel
from apps.controls.switches import switch_set
from apps.jobs.execute import job_execute
from apps.jobs.models import Job, JobStatus
from apps.tenants.services import public_tenant_ensure
from tests.support import Personas, job_until_final

BODY = {"model": "local-small", "messages": [{"role": "user", "content": "hi"}]}


def _post(persona, **body):
    return persona.client().post("/api/v1/jobs", {**BODY, **body}, format="json")


def test_each_level_stops_admission_with_403_naming_the_switch(committed_personas: Personas):
    alice, bob, carol = committed_personas.alice, committed_personas.bob, committed_personas.carol
    acme = alice.tenant

    switch_set(level=SwitchLevel.USER, tenant=acme, user_id=bob.user_id, user_email=bob.email,
               active=True, actor="test", reason="abuse report")  # fmt: skip
    response = _post(bob)
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "ai_disabled"
    assert response.json()["error"]["message"] == f"AI is switched off for user {bob.email}: abuse report"
    assert _post(alice).status_code == 202  # the same tenant's other users go on

    switch_set(level=SwitchLevel.MODEL, model="premium-large", active=True, actor="test", reason="price change")
    assert (
        _post(alice, model="premium-large")
        .json()["error"]["message"]
        .startswith("AI is switched off for model premium-large")
    )
    assert _post(carol).status_code == 202

    switch_set(level=SwitchLevel.TENANT, tenant=acme, active=True, actor="test", reason="unpaid invoice")
    assert "tenant acme: unpaid invoice" in _post(alice).json()["error"]["message"]
    assert _post(carol).status_code == 202  # another tenant

    switch_set(level=SwitchLevel.GLOBAL, active=True, actor="test", reason="provider incident")
    assert "all AI: provider incident" in _post(carol).json()["error"]["message"]

    for level, scope in (
        (SwitchLevel.GLOBAL, {}),
        (SwitchLevel.TENANT, {"tenant": acme}),
        (SwitchLevel.MODEL, {"model": "premium-large"}),
    ):
        switch_set(level=level, active=False, actor="test", reason="resolved", **scope)
    assert _post(carol).status_code == 202
    assert _post(bob).status_code == 403  # still switched off on its own
    events = KillSwitchEvent.objects.filter(switch__level=SwitchLevel.USER)
    assert [(e.active, e.actor, e.reason) for e in events] == [(True, "test", "abuse report")]
    redis.Redis.from_url(settings.CELERY_BROKER_URL).delete("llm.local-small", "llm.premium-large")


def test_openai_sdk_gets_permission_denied(platform_server, committed_personas: Personas):
    switch_set(level=SwitchLevel.GLOBAL, active=True, actor="test", reason="maintenance")
    sdk = openai.OpenAI(base_url=f"{platform_server.url}/v1", api_key=committed_personas.alice.key, max_retries=0)
    with pytest.raises(openai.PermissionDeniedError) as caught:
        sdk.chat.completions.create(model="local-small", messages=[{"role": "user", "content": "hi"}])
    assert caught.value.code == "ai_disabled"


def test_job_queued_before_the_tenant_switch_flips_is_cancelled_in_the_worker(committed_personas: Personas, upstream):
    alice = committed_personas.alice
    client = alice.client()
    job = client.post("/api/v1/jobs", {**BODY, "model": "routing-probe"}, format="json").json()  # nobody runs it yet
    switch_set(level=SwitchLevel.TENANT, tenant=alice.tenant, active=True, actor="ops", reason="fraud check")
    with tenant_context(alice.tenant):
        job_execute(job_id=Job.objects.get(pk=job["id"]).pk)  # the worker picks it up now
    final = job_until_final(client, job["id"])
    assert final["status"] == JobStatus.CANCELLED
    assert final["error"]["type"] == "ai_disabled"
    assert "fraud check" in final["error"]["message"]
    assert upstream.stats()["chat_per_model"].get("routing-probe", 0) == 0
    redis.Redis.from_url(settings.CELERY_BROKER_URL).delete("llm.routing-probe")


def test_command_toggles_and_lists_switches_with_an_audit_trail(committed_personas: Personas):
    bob = committed_personas.bob
    out = io.StringIO()
    call_command("kill_switch", "on", "--level", "user", "--tenant", "acme", "--user", bob.email,
                 "--reason", "chargeback", "--actor", "ops@example.com", stdout=out)  # fmt: skip
    assert f"AI switched OFF for user {bob.email}" in out.getvalue()
    assert _post(bob).status_code == 403
    call_command("kill_switch", "off", "--level", "user", "--tenant", "acme", "--user", bob.email,
                 "--reason", "refunded", "--actor", "ops@example.com", stdout=io.StringIO())  # fmt: skip
    assert _post(bob).status_code == 202
    listing = io.StringIO()
    call_command("kill_switch", "list", stdout=listing)
    assert f"off user {bob.email}: refunded [ops@example.com]" in listing.getvalue()
    switch = KillSwitch.objects.get(level=SwitchLevel.USER, user_id=bob.user_id)
    assert [(e.active, e.reason) for e in switch.events.order_by("at")] == [(True, "chargeback"), (False, "refunded")]
    with pytest.raises(CommandError, match="--reason is required"):
        call_command("kill_switch", "on", "--level", "global")
    with pytest.raises(CommandError, match="No user"):
        call_command("kill_switch", "on", "--level", "user", "--tenant", "acme", "--user", "x@y.z", "--reason", "r")
    redis.Redis.from_url(settings.CELERY_BROKER_URL).delete("llm.local-small")


@pytest.fixture
def operator_client(db, platform) -> Client:
    public_tenant_ensure(domain="testserver")
    with schema_context("public"):
        operator = get_user_model().objects.create_superuser("operator", "op@x.test", "pw-operator-1")
    client = Client()
    client.force_login(operator)
    return client


def test_admin_saves_are_audited_with_the_operator(personas: Personas, operator_client: Client):
    assert operator_client.get("/admin/controls/killswitch/").status_code == 200
    response = operator_client.post(
        "/admin/controls/killswitch/add/",
        {
            "level": "global",
            "user_email": "",
            "model": "",
            "active": "on",
            "reason": "incident 42",
            "events-TOTAL_FORMS": "0",
            "events-INITIAL_FORMS": "0",
        },
    )
    assert response.status_code == 302, response.content[:2000]
    switch = KillSwitch.objects.get(level=SwitchLevel.GLOBAL)
    assert switch.active and switch.updated_by == "operator"
    assert [(e.actor, e.reason) for e in switch.events.all()] == [("operator", "incident 42")]
    assert _post(personas.alice).status_code == 403
