from __future__ import annotations

from django.db import transaction
from django_tenants.utils import get_public_schema_name

from .models import Domain, Tenant


def tenant_create(*, schema_name: str, name: str, domain: str) -> Tenant:
    """Create a tenant, its schema (migrated) and its primary domain."""
    if Tenant.objects.filter(schema_name=schema_name).exists():
        raise ValueError(f"A tenant with schema {schema_name!r} already exists.")
    if Domain.objects.filter(domain=domain).exists():
        raise ValueError(f"The domain {domain!r} is already taken.")
    # Creating the schema runs every tenant migration; the row and the domain
    # commit together so a failure leaves no half-made tenant row.
    with transaction.atomic():
        tenant = Tenant(schema_name=schema_name, name=name)
        tenant.full_clean(exclude=["domain_url"])
        tenant.save(verbosity=0)
        Domain.objects.create(domain=domain, tenant=tenant, is_primary=True)
    return tenant


def public_tenant_ensure(*, domain: str) -> Tenant:
    """The public schema's tenant row and domain, which the operator admin is served on."""
    tenant, _ = Tenant.objects.get_or_create(schema_name=get_public_schema_name(), defaults={"name": "Platform"})
    Domain.objects.get_or_create(domain=domain, defaults={"tenant": tenant, "is_primary": True})
    return tenant
