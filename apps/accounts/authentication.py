from __future__ import annotations

from django_tenants.utils import get_public_schema_name
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication
from rest_framework.request import Request

from apps.tenants.db import current_schema

from .keys import parse_bearer
from .selectors import Principal, principal_for_key


class ApiKeyAuthentication(BaseAuthentication):
    """`Authorization: Bearer aip_<prefix>_<secret>`. The tenant middleware has
    already switched to the key's tenant schema (or left the request on public
    when the prefix is unknown)."""

    def authenticate(self, request: Request) -> tuple[Principal, None] | None:
        header = request.META.get("HTTP_AUTHORIZATION", "")
        if not header:
            return None
        parsed = parse_bearer(header)
        if parsed is None:
            raise exceptions.AuthenticationFailed("Malformed API key: expected 'Authorization: Bearer aip_...'.")
        if current_schema() == get_public_schema_name():
            raise exceptions.AuthenticationFailed("Invalid API key.")
        principal = principal_for_key(parsed)
        if principal is None:
            raise exceptions.AuthenticationFailed("Invalid API key.")
        return principal, None

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="api"'
