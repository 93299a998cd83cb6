"""Beat, every 5 minutes: keep each tenant's semantic cache within its TTL and
its maximum number of entries (least recently hit go first)."""

from __future__ import annotations

import logging

from django_tenants.utils import get_tenant_model, tenant_context

from aiplatform.celery import app
from apps.cache.policy import policy_for
from apps.cache.semantic import semantic_evict

logger = logging.getLogger(__name__)


@app.task(name="cache.evict", ignore_result=True)
def cache_evict() -> None:
    for tenant in get_tenant_model().objects.exclude(schema_name="public"):
        with tenant_context(tenant):
            evicted = semantic_evict(policy=policy_for(tenant.schema_name))
        if evicted:
            logger.info("semantic cache %s: %d entries evicted", tenant.schema_name, evicted)
