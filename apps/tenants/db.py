"""The default connection, typed as what it is: django-tenants' wrapper, which
knows its current schema and tenant (django-stubs only knows the base class)."""

from typing import Any

from django.db import connection


def tenant_connection() -> Any:
    return connection


def current_schema() -> str:
    schema: str = tenant_connection().schema_name
    return schema


def release_connection() -> None:
    """Hand this thread's database connection back to the pool while it waits on
    something slow (a provider's stream, an SSE client). The tenant stays selected:
    the next query takes a pooled connection and sets its search_path again. Without
    this, every streaming job or listener would pin a connection for its whole
    life, and the pool (DB_POOL_MAX_SIZE) would cap concurrent streams."""
    connection = tenant_connection()
    if not connection.in_atomic_block:
        connection.close()
