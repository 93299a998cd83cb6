"""The default connection, typed as what it is: django-tenants' wrapper, which
knows its current schema and tenant (django-stubs only knows the base class)."""

from typing import Any

from django.db import connection


def tenant_connection() -> Any:
    return connection


def current_schema() -> str:
    schema: str = tenant_connection().schema_name
    return schema
