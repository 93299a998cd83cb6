from __future__ import annotations

import pytest
from django.core.management import call_command
from django_tenants.utils import tenant_context
from rest_framework.test import APIClient

from apps.accounts.keys import hash_secret, parse_key
from apps.accounts.models import ApiKey, User
from apps.accounts.services import api_key_revoke
from apps.tenants.models import ApiKeyRoute
from tests.support import Personas


def _parse(raw: str):
    parsed = parse_key(raw)
    assert parsed is not None
    return parsed


CHAT = {"model": "local-small", "messages": [{"role": "user", "content": "hi"}]}


def _unauthorized(response):
    assert response.status_code == 401, response.content
    assert response.json()["error"]["type"] == "authentication_error"
    assert response.json()["error"]["code"] == "invalid_api_key"
    assert response["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize(
    "header",
    [None, "Bearer nonsense", "Basic abc", "Bearer aip_0000000000_secret-that-maps-to-no-tenant"],
)
def test_missing_or_bad_key_is_401(personas: Personas, header):
    client = APIClient()
    if header:
        client.credentials(HTTP_AUTHORIZATION=header)
    _unauthorized(client.post("/api/v1/jobs", CHAT, format="json"))
    _unauthorized(client.get("/api/v1/jobs"))


def test_right_prefix_wrong_secret_is_401(personas: Personas):
    parsed = _parse(personas.alice.key)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer aip_{parsed.prefix}_wrong-secret")
    _unauthorized(client.get("/api/v1/jobs"))


def test_revoked_key_is_401(personas: Personas):
    client = personas.alice.client()
    assert client.get("/api/v1/jobs").status_code == 200
    with tenant_context(personas.alice.tenant):
        api_key_revoke(key=ApiKey.objects.get(prefix=_parse(personas.alice.key).prefix))
    _unauthorized(client.get("/api/v1/jobs"))


def test_deactivated_user_is_401(personas: Personas):
    with tenant_context(personas.bob.tenant):
        User.objects.filter(pk=personas.bob.user_id).update(is_active=False)
    _unauthorized(personas.bob.client().get("/api/v1/jobs"))


def test_key_secret_is_stored_only_as_hmac(personas: Personas):
    parsed = _parse(personas.alice.key)
    with tenant_context(personas.alice.tenant):
        row = ApiKey.objects.get(prefix=parsed.prefix)
    assert parsed.secret not in row.secret_hash
    assert row.secret_hash == hash_secret(parsed.secret)
    assert ApiKeyRoute.objects.get(prefix=parsed.prefix).tenant == personas.alice.tenant


def test_key_works_on_any_host(personas: Personas):
    """The tenant comes from the key, not the Host header."""
    client = personas.carol.client()
    assert client.get("/api/v1/jobs", HTTP_HOST="acme.testserver").status_code == 200
    assert client.get("/api/v1/jobs", HTTP_HOST="127.0.0.1").status_code == 200


def test_create_api_key_command_prints_key_once_and_it_works(personas: Personas, capsys):
    call_command("create_api_key", tenant="acme", email="dave@acme.test", tier="premium")
    out = capsys.readouterr().out
    raw = out.strip().splitlines()[-1]
    assert raw.startswith("aip_")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert client.get("/api/v1/jobs").status_code == 200
    with tenant_context(personas.alice.tenant):
        assert User.objects.get(email="dave@acme.test").tier == "premium"
