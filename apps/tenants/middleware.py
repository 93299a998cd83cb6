from __future__ import annotations

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.urls import set_urlconf
from django_tenants.middleware.main import TenantMainMiddleware

from apps.accounts.keys import parse_bearer

from .db import tenant_connection
from .models import Tenant
from .selectors import tenant_for_key_prefix

# Paths whose tenant comes from the API key rather than the Host header.
API_PATH_PREFIXES = ("/api/v1/", "/v1/")


def activate_key_tenant(authorization: str) -> Tenant | None:
    """Select, on this thread's connection, the schema of the tenant that owns the
    API key in an `Authorization` header; public (and None) when the header names
    no active tenant's key. Only the prefix is looked at: the key itself is checked
    by the view's authentication, inside the tenant's schema."""
    connection = tenant_connection()
    connection.set_schema_to_public()
    parsed = parse_bearer(authorization)
    tenant = tenant_for_key_prefix(parsed.prefix) if parsed else None
    if tenant is not None:
        connection.set_tenant(tenant)
    return tenant


class TenantResolutionMiddleware(TenantMainMiddleware):
    """Selects the tenant schema for a request.

    API calls carry `Authorization: Bearer aip_<prefix>_<secret>`: the prefix maps
    (public schema, cached) to the tenant, so an API request costs no Host lookup
    and works on any host name. Everything else (the admin) is resolved by Host as
    django-tenants does: `localhost` is the operator's admin, `<tenant>.localhost`
    a tenant's. A missing or unknown key leaves the request on the public URLconf,
    where the API views answer 401.
    """

    def process_request(self, request: HttpRequest) -> HttpResponse | None:
        if request.path.startswith(API_PATH_PREFIXES):
            tenant = activate_key_tenant(request.META.get("HTTP_AUTHORIZATION", ""))
            if tenant is not None:
                request.tenant = tenant  # type: ignore[attr-defined]
                request.urlconf = settings.ROOT_URLCONF
            else:
                request.urlconf = settings.PUBLIC_SCHEMA_URLCONF
            set_urlconf(request.urlconf)
            return None
        response: HttpResponse | None = super().process_request(request)
        return response
