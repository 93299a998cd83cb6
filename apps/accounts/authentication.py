from __future__ import annotations

from django_tenants.utils import get_public_schema_name
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication
from rest_framework.request import Request

from apps.observability.context import bind
from apps.tenants.db import current_schema

from .keys import parse_bearer
from .selectors import Principal, principal_for_key


class InvalidKey(Exception):
    """The Authorization header names no valid key; the message says why."""


def principal_from_header(header: str) -> Principal | None:
    """The caller behind an `Authorization` header, None when there is none, or
    InvalidKey. The tenant middleware has already switched to the key's tenant
    schema (or left the request on public when the prefix is unknown)."""
    if not header:
        return None
    parsed = parse_bearer(header)
    if parsed is None:
        raise InvalidKey("Malformed API key: expected 'Authorization: Bearer aip_...'.")
    if current_schema() == get_public_schema_name():
        raise InvalidKey("Invalid API key.")
    principal = principal_for_key(parsed)
    if principal is None:
        raise InvalidKey("Invalid API key.")
    # Every log line, span and error report of this request names its tenant and user.
    bind(tenant=principal.tenant_schema, user=principal.user_id)
    return principal


class ApiKeyAuthentication(BaseAuthentication):
    """`Authorization: Bearer aip_<prefix>_<secret>` for DRF views."""

    def authenticate(self, request: Request) -> tuple[Principal, None] | None:
        try:
            principal = principal_from_header(request.META.get("HTTP_AUTHORIZATION", ""))
        except InvalidKey as exc:
            raise exceptions.AuthenticationFailed(str(exc)) from exc
        return (principal, None) if principal is not None else None

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="api"'
