"""Admin sites are resolved by Host: PUBLIC_DOMAIN (localhost; testserver in tests) is the
operator's, <tenant>.<domain> a tenant's."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django import forms
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.test import Client
from django_tenants.utils import schema_context, tenant_context

from apps.accounts.models import ApiKey
from apps.catalog.models import LLMModel
from apps.tenants.models import Domain, Tenant
from apps.tenants.services import public_tenant_ensure
from tests.support import Personas


@pytest.fixture
def operator(db, platform):
    public_tenant_ensure(domain="testserver")
    with schema_context("public"):
        return get_user_model().objects.create_superuser("op", "op@x.test", "pw-operator-1")


def test_operator_admin_shows_catalog_and_tenants(operator):
    client = Client()
    client.force_login(operator)
    page = client.get("/admin/")
    assert page.status_code == 200
    assert b"Models" in page.content and b"Tenants" in page.content
    catalog = client.get("/admin/catalog/llmmodel/")
    assert catalog.status_code == 200
    assert b"local-small" in catalog.content
    assert b"llm.local-small" in catalog.content
    assert b"Circuit breaker" in catalog.content and b">closed<" in catalog.content


def test_tenant_admin_creates_a_key_and_shows_it_once(personas: Personas):
    tenant = personas.alice.tenant
    with tenant_context(tenant):
        admin = get_user_model().objects.create_superuser("acme-admin", "a@acme.test", "pw-tenant-1")
    client = Client(HTTP_HOST="acme.testserver")
    with tenant_context(tenant):  # logins and sessions live in the tenant's schema
        client.force_login(admin)
    assert client.get("/admin/").status_code == 200
    assert b"API keys" in client.get("/admin/").content
    response = client.post("/admin/accounts/apikey/add/", {"user": personas.alice.user_id, "name": "ci"}, follow=True)
    assert response.status_code == 200
    shown = [str(m) for m in response.context["messages"]]
    assert any("aip_" in m for m in shown), shown
    raw = next(m for m in shown if "aip_" in m).split()[-1]
    api = Client(HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert api.get("/api/v1/jobs").status_code == 200
    with tenant_context(tenant):
        assert ApiKey.objects.filter(name="ci").count() == 1


def test_seed_demo_is_idempotent(db, platform, capsys):
    call_command("seed_demo", local_base_url="http://127.0.0.1:9/v1")
    first = capsys.readouterr().out
    call_command("seed_demo", local_base_url="http://127.0.0.1:9/v1")
    second = capsys.readouterr().out
    assert "Demo API key" in first
    assert "already has a key" in second
    assert Tenant.objects.filter(schema_name="demo").count() == 1
    assert Domain.objects.filter(domain=settings.PUBLIC_DOMAIN).exists()


def _form_data(form: Any) -> dict[str, str]:
    """What the browser posts back for an unchanged admin form."""
    data: dict[str, str] = {}
    for bound in form:
        value = bound.value()
        if isinstance(bound.field, forms.BooleanField):
            if value:
                data[bound.name] = "on"
        else:
            data[bound.name] = "" if value is None else str(value)
    return data


@pytest.mark.parametrize(
    ("tiers", "saved"),
    [
        ('{"priority": "2", "flex": "0.5"}', True),
        ("{}", True),
        ('{"priority": 2}', False),  # a number, not a decimal string
        ('{"priority": "0"}', False),
        ('{"flex": "-0.5"}', False),
        ('{"priority": "NaN"}', False),
        ('{"priority": "two"}', False),
        ('{"auto": "1"}', False),  # every model's, at 1x: not the catalog's to price
        ('{"turbo": "2"}', False),
        ('["priority"]', False),
    ],
)
def test_the_catalog_form_takes_store_and_priced_service_tiers(operator, tiers: str, saved: bool):
    client = Client()
    client.force_login(operator)
    row = LLMModel.objects.get(slug="local-small")
    url = f"/admin/catalog/llmmodel/{row.pk}/change/"
    page = client.get(url)
    assert b'name="allows_store"' in page.content and b'name="service_tiers"' in page.content
    data = {**_form_data(page.context["adminform"].form), "allows_store": "on", "service_tiers": tiers}
    response = client.post(url, data)
    row.refresh_from_db()
    if saved:
        assert response.status_code == 302, response.context["adminform"].form.errors
        assert (row.allows_store, row.service_tiers) == (True, json.loads(tiers))
    else:
        assert response.status_code == 200
        errors = response.context["adminform"].form.errors
        assert list(errors) == ["service_tiers"] and "price multiple as a decimal string" in str(errors)
        assert (row.allows_store, row.service_tiers) == (False, {})
