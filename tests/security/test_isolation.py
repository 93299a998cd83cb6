"""Isolation, privilege and information: what one tenant (or one user) can do to,
or learn about, another."""

from __future__ import annotations

import secrets

from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from apps.accounts.keys import parse_bearer
from apps.tenants import selectors
from apps.tenants.selectors import tenant_for_key_prefix
from tests.support import Personas

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
