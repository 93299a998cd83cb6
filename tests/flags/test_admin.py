"""The flag admin: the operator's list and its rollout action, the change
visible through the API at once (the action saves each flag: its broadcast)."""

from __future__ import annotations

from decimal import Decimal

from django.contrib.auth import get_user_model
from django.test import Client
from django_tenants.utils import schema_context, tenant_context

from apps.flags.models import Flag, FlagChange
from apps.tenants.services import public_tenant_ensure
from tests.support import Personas


def test_the_rollout_action_changes_what_the_api_evaluates(committed_personas: Personas):
    public_tenant_ensure(domain="testserver")
    with schema_context("public"):
        operator = get_user_model().objects.create_superuser("op-flags", "op@x.test", "pw-operator-1")
    flag = Flag.objects.create(key="to-premium", model="local-small", rollout_model="premium-large")
    admin = Client()
    admin.force_login(operator)
    listing = admin.get("/admin/flags/flag/")
    assert listing.status_code == 200 and b"to-premium" in listing.content
    api = committed_personas.alice.client()
    assert api.get("/api/v1/flags").json()["data"] == []  # a disabled platform flag concerns nobody

    done = admin.post("/admin/flags/flag/", {"action": "set_rollout_100", "_selected_action": [flag.pk]}, follow=True)
    assert done.status_code == 200
    with schema_context("public"):
        flag.refresh_from_db()
    assert flag.enabled and flag.rollout_percent == Decimal("100")
    assert api.get("/api/v1/flags").json()["data"][0] == {
        "key": "to-premium",
        "scope": "platform",
        "on": True,
        "model": "local-small",
        "rollout_model": "premium-large",
        "routes_to": "premium-large",
    }
    # Audited: who, and the fields before and after; shown on the flag's page.
    with schema_context("public"):  # the API calls left this thread's connection in acme's schema
        [change] = FlagChange.objects.filter(flag_id=flag.pk)
    assert change.actor == "op-flags"
    assert change.old is not None and change.new is not None
    assert (change.old["enabled"], change.old["rollout_percent"]) == (False, "0.00")
    assert (change.new["enabled"], change.new["rollout_percent"]) == (True, "100")
    page = admin.get(f"/admin/flags/flag/{flag.pk}/change/")
    assert page.status_code == 200 and b"who changed what" in page.content and b"op-flags" in page.content
    with schema_context("public"):
        get_user_model().objects.filter(username="op-flags").delete()


def test_a_tenant_admin_manages_its_own_flags(personas: Personas):
    tenant = personas.alice.tenant
    with tenant_context(tenant):
        admin_user = get_user_model().objects.create_superuser("acme-flags", "a@acme.test", "pw-tenant-1")
        own = Flag.objects.create(key="acme-only", model="local-small", rollout_model="premium-large")
    client = Client(HTTP_HOST="acme.testserver")
    with tenant_context(tenant):  # logins and sessions live in the tenant's schema
        client.force_login(admin_user)
    listing = client.get("/admin/flags/flag/")
    assert listing.status_code == 200 and b"acme-only" in listing.content
    done = client.post("/admin/flags/flag/", {"action": "set_rollout_25", "_selected_action": [own.pk]}, follow=True)
    assert done.status_code == 200
    with tenant_context(tenant):
        own.refresh_from_db()
        assert own.enabled and own.rollout_percent == Decimal("25")
        assert FlagChange.objects.get(flag=own).actor == "acme-flags"
    with schema_context("public"):
        assert not Flag.objects.filter(key="acme-only").exists()  # in acme's schema only
