"""Beat, just after midnight UTC: close the budget periods that ended."""

from __future__ import annotations

import logging

from aiplatform.celery import app
from apps.billing.periods import periods_close

logger = logging.getLogger(__name__)


@app.task(name="budgets.reset", ignore_result=True)
def budgets_reset() -> None:
    for line in periods_close():
        logger.info("reset_budgets: %s", line)
