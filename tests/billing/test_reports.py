"""Reading spend: the usage API, spend_report and the operator's spend chart."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.test import Client
from django_tenants.utils import schema_context, tenant_context

from apps.accounts.services import api_key_create
from apps.billing.models import LedgerKind
from apps.billing.services import ledger_record
from apps.tenants.services import public_tenant_ensure
from tests.support import Persona, Personas


def _spend(persona: Persona, model: str, cost: int, kind: LedgerKind = LedgerKind.ADJUSTMENT) -> None:
    with tenant_context(persona.tenant):
        ledger_record(kind=kind, user_id=persona.user_id, model=model, cost=cost, input_tokens=10, output_tokens=5)


def test_usage_api_shows_a_user_their_own_and_an_admin_key_the_tenant(committed_personas: Personas):
    alice, bob = committed_personas.alice, committed_personas.bob
    _spend(alice, "local-small", 1500)
    _spend(alice, "premium-large", 2500)
    _spend(bob, "local-small", 7000)

    own = alice.client().get("/api/v1/usage?group_by=model").json()
    assert own["scope"] == "user"
    assert [(r["model"], r["cost_micros"]) for r in own["data"]] == [("local-small", 1500), ("premium-large", 2500)]
    assert (own["total_cost_micros"], own["total_cost_usd"]) == (4000, "$0.004")
    assert alice.client().get("/api/v1/usage?group_by=user").status_code == 403

    with tenant_context(alice.tenant):
        from apps.accounts.models import User

        _, admin_key = api_key_create(user=User.objects.get(pk=alice.user_id), name="admin", is_admin=True)
    admin = alice.client()
    admin.credentials(HTTP_AUTHORIZATION=f"Bearer {admin_key}")
    tenant = admin.get("/api/v1/usage?group_by=user").json()
    assert tenant["scope"] == "tenant"
    assert {r["user"]: r["cost_micros"] for r in tenant["data"]} == {alice.email: 4000, bob.email: 7000}
    by_day = admin.get("/api/v1/usage").json()
    assert by_day["group_by"] == "day" and by_day["data"][0]["cost_micros"] == 11000

    bad = alice.client().get("/api/v1/usage?group_by=week&since=yesterday")
    assert bad.status_code == 400
    assert bad.json()["error"]["param"] == "group_by"
    assert alice.client().get("/api/v1/usage?since=2999-01-01").json()["data"] == []


def test_spend_report_command_in_every_format(committed_personas: Personas):
    _spend(committed_personas.alice, "local-small", 1500)
    _spend(committed_personas.carol, "premium-large", 2000)
    table = io.StringIO()
    call_command("spend_report", "--by", "model", stdout=table)
    assert "acme" in table.getvalue() and "globex" in table.getvalue()
    assert "total since" in table.getvalue() and "$0.0035" in table.getvalue()
    out = io.StringIO()
    call_command("spend_report", "--tenant", "globex", "--by", "model", "--format", "json", stdout=out)
    rows = json.loads(out.getvalue())["rows"]
    assert [(r["tenant"], r["model"], r["cost_micros"]) for r in rows] == [("globex", "premium-large", 2000)]
    out = io.StringIO()
    call_command("spend_report", "--tenant", "acme", "--by", "user", "--format", "csv", stdout=out)
    parsed = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert parsed[0]["user"] == committed_personas.alice.email and parsed[0]["cost_micros"] == "1500"


@pytest.fixture
def operator_client(committed_db, platform) -> Iterator[Client]:
    public_tenant_ensure(domain="testserver")
    with schema_context("public"):
        operator = get_user_model().objects.create_superuser("spend-operator", "op@x.test", "pw-operator-1")
    client = Client()
    client.force_login(operator)
    yield client
    with schema_context("public"):
        operator.delete()


def test_operator_spend_page_draws_daily_spend_by_model(committed_personas: Personas, operator_client: Client):
    _spend(committed_personas.alice, "local-small", 1_500_000)
    _spend(committed_personas.carol, "premium-large", 500_000)
    page = operator_client.get("/admin/spend/")
    assert page.status_code == 200
    html = page.content.decode()
    assert '<svg id="spend-chart"' in html
    assert html.count('<rect class="bar"') == 2  # today's two models, stacked
    assert "local-small: $1.50" in html and "premium-large: $0.50" in html
    assert "Total: <strong>$2.00</strong>" in html
    assert Client().get("/admin/spend/").status_code == 302  # staff only
