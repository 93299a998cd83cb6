from __future__ import annotations

from django.conf import settings
from django.core.exceptions import DisallowedHost
from django.http import HttpRequest, HttpResponse
from django.urls import set_urlconf
from django_tenants.middleware.main import TenantMainMiddleware
from django_tenants.utils import get_public_schema_name

from apps.accounts.keys import parse_bearer
from apps.core.paths import API_PATH_PREFIXES

from .db import tenant_connection
from .models import Tenant
from .selectors import tenant_for_key_prefix

# What a Host that is neither PUBLIC_DOMAIN nor a tenant's gets: the API only.
API_URLCONF = "aiplatform.urls_api"


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
    and works on any host name. Everything else is resolved by Host as
    django-tenants does, with one rule of ours: the operator admin (and /metrics)
    answer on PUBLIC_DOMAIN only. A tenant's domain gets its admin; any other host
    (unknown, or another domain row of the public schema) gets the API alone, so
    a forged Host never reaches the operator admin. A missing or unknown key
    leaves an API request on that API-only URLconf, where the views answer 401.
    """

    def process_request(self, request: HttpRequest) -> HttpResponse | None:
        if request.path.startswith(API_PATH_PREFIXES):
            tenant = activate_key_tenant(request.META.get("HTTP_AUTHORIZATION", ""))
            if tenant is not None:
                request.tenant = tenant  # type: ignore[attr-defined]
                request.urlconf = settings.ROOT_URLCONF
            else:
                request.urlconf = API_URLCONF
            set_urlconf(request.urlconf)
            return None
        response: HttpResponse | None = super().process_request(request)
        if response is not None:
            return response
        tenant = getattr(request, "tenant", None)
        if tenant is None or tenant.schema_name == get_public_schema_name():
            try:
                hostname = self.hostname_from_request(request)
            except DisallowedHost:  # super() already answered 404 for these
                hostname = ""
            if hostname != settings.PUBLIC_DOMAIN.lower():
                request.urlconf = API_URLCONF
                set_urlconf(request.urlconf)
        return None
