"""Soft-threshold alerts, the hard limit's automatic kill switch, and closing
periods with reset_budgets."""

from __future__ import annotations

import io
from datetime import timedelta
from decimal import Decimal

import redis
from django.conf import settings
from django.core import mail
from django.core.management import call_command
from django.utils import timezone
from django_tenants.utils import tenant_context

from apps.billing.models import UserBudget
from apps.billing.periods import periods_close
from apps.billing.services import worst_case_cost
from apps.billing.windows import period_window
from apps.catalog.selectors import model_get
from apps.controls.models import KillSwitch, SwitchLevel
from apps.controls.switches import switch_set
from apps.llm.tokens import count_message_tokens
from tests.support import Personas, job_until_final, verify_webhook, wait_for

MESSAGES = [{"role": "user", "content": "hello budget"}]


def _worst(max_tokens: int) -> int:
    spec = model_get("local-small")
    assert spec is not None
    return worst_case_cost(spec, input_tokens=count_message_tokens(MESSAGES), max_tokens=max_tokens)


def test_soft_threshold_alerts_once_by_mail_and_signed_webhook(worker, committed_personas: Personas, receiver):
    alice = committed_personas.alice
    tenant = alice.tenant
    tenant.alert_email, tenant.alert_webhook_url = "ops@acme.test", receiver.url
    tenant.save()
    with tenant_context(tenant):
        UserBudget.objects.create(
            user_id=alice.user_id, period="day", limit_usd=Decimal(_worst(10) * 3) / 1_000_000, soft_percent=10
        )
    mail.outbox.clear()
    client = alice.client()
    for _ in range(2):
        job = client.post(
            "/api/v1/jobs", {"model": "local-small", "messages": MESSAGES, "max_tokens": 10}, format="json"
        )
        assert job_until_final(client, job.json()["id"])["status"] == "succeeded"

    wait_for(lambda: len(receiver.received) == 1 and len(mail.outbox) == 1)
    alert = verify_webhook(tenant.webhook_secret, receiver.received[0])
    assert alert["type"] == "budget.soft"
    assert (alert["scope"], alert["user"], alert["period"], alert["soft_percent"]) == ("user", alice.email, "day", 10)
    assert alert["period_end"] == period_window("day").end.isoformat()
    assert mail.outbox[0].to == ["ops@acme.test"]
    assert "soft threshold" in mail.outbox[0].body and alice.email in mail.outbox[0].body
    # The second job also crossed the threshold: still one alert this period.
    assert len(receiver.received) == 1 and len(mail.outbox) == 1
    tenant.alert_email, tenant.alert_webhook_url = "", ""
    tenant.save()


def test_hard_limit_switches_the_user_off_until_reset(worker, committed_personas: Personas, micro_priced):
    """The hard limit is reached when settled spend reaches the limit (here one call
    of 5 output tokens at 1 micro-dollar each uses all 5): the settlement flips it."""
    bob = committed_personas.bob
    with tenant_context(bob.tenant):
        UserBudget.objects.create(user_id=bob.user_id, period="day", limit_usd=Decimal(5) / 1_000_000)
    client = bob.client()
    body = {"model": "local-small", "messages": MESSAGES, "max_tokens": 5}
    first = client.post("/api/v1/jobs", body, format="json")
    assert first.status_code == 202
    assert job_until_final(client, first.json()["id"])["usage"]["output_tokens"] == 5
    switch = wait_for(lambda: KillSwitch.objects.filter(level=SwitchLevel.USER, user_id=bob.user_id).first())
    assert switch.active and switch.automatic and switch.period == period_window("day").ident
    assert switch.updated_by == "system:budget"
    # Now even a small request is stopped, as a budget matter (402), by the switch.
    small = client.post("/api/v1/jobs", {**body, "max_tokens": 1}, format="json")
    assert small.status_code == 402
    message = small.json()["error"]["message"]
    assert message.startswith(f"AI is switched off for user {bob.email} until its budget")
    assert "Your daily budget of $0.000005 is used up ($0.000005 spent" in message  # their own: amounts shown

    # The period has not ended: a reset now clears nothing.
    assert periods_close()[0] == "no automatic kill switch to clear"
    tomorrow = timezone.now() + timedelta(days=1)
    lines = periods_close(dry_run=True, now=tomorrow)
    assert lines[0].startswith(f"would clear the kill switch of user {bob.email}")
    assert KillSwitch.objects.get(pk=switch.pk).active
    lines = periods_close(now=tomorrow)
    assert lines[0].startswith(f"cleared the kill switch of user {bob.email}")
    switch.refresh_from_db()
    assert not switch.active and not switch.automatic
    assert [e.actor for e in switch.events.order_by("at")] == ["system:budget", "system:reset_budgets"]
    assert periods_close(now=tomorrow)[0] == "no automatic kill switch to clear"  # safe to run twice


def test_reset_budgets_command_clears_only_ended_automatic_switches(committed_personas: Personas):
    alice, bob = committed_personas.alice, committed_personas.bob
    switch_set(level=SwitchLevel.USER, tenant=alice.tenant, user_id=alice.user_id, user_email=alice.email,
               active=True, actor="system:budget", reason="over", automatic=True, period="d20200101")  # fmt: skip
    switch_set(level=SwitchLevel.USER, tenant=bob.tenant, user_id=bob.user_id, user_email=bob.email,
               active=True, actor="ops", reason="manual")  # fmt: skip
    out = io.StringIO()
    call_command("reset_budgets", "--period", "day", "--tenant", "acme", stdout=out)
    assert f"cleared the kill switch of user {alice.email} (hard limit, period d20200101)" in out.getvalue()
    assert not KillSwitch.objects.get(user_id=alice.user_id).active
    assert KillSwitch.objects.get(user_id=bob.user_id).active  # manual switches stay
    again = io.StringIO()
    call_command("reset_budgets", stdout=again)
    assert "no automatic kill switch to clear" in again.getvalue()
    redis.Redis.from_url(settings.CELERY_BROKER_URL).delete("llm.local-small")
