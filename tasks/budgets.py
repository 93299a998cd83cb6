"""Beat, just after midnight UTC: close the budget periods that ended."""

from __future__ import annotations

import logging

from django_tenants.utils import get_tenant_model, tenant_context

from aiplatform.celery import app
from apps.billing.periods import periods_close
from apps.jobs.holds import holds_repair

logger = logging.getLogger(__name__)


@app.task(name="budgets.reset", ignore_result=True)
def budgets_reset() -> None:
    for line in periods_close():
        logger.info("reset_budgets: %s", line)


@app.task(name="budgets.sweep", ignore_result=True)
def budgets_sweep() -> None:
    """Beat, every 5 minutes: settle or release holds nothing else will."""
    for tenant in get_tenant_model().objects.exclude(schema_name="public"):
        with tenant_context(tenant):
            result = holds_repair(schema=tenant.schema_name)
        if result["settled"] or result["released"]:
            logger.warning("budget sweep %s: %s", tenant.schema_name, result)
