"""Budget alert delivery (queue `webhooks`, beside completion webhooks), retried with backoff when the webhook fails."""

from __future__ import annotations

from typing import Any

from django.conf import settings

from aiplatform.celery import app
from apps.billing.alerts import alert_deliver
from tasks.webhooks import WEBHOOK_SOFT_TIME_LIMIT, WEBHOOK_TIME_LIMIT


@app.task(
    name="alerts.send",
    acks_late=True,
    ignore_result=True,
    soft_time_limit=WEBHOOK_SOFT_TIME_LIMIT,
    time_limit=WEBHOOK_TIME_LIMIT,
)
def alert_send(*, payload: dict[str, Any]) -> None:
    attempt = int(payload.get("attempt", 1))
    try:
        alert_deliver(payload)
    except OSError:
        if attempt >= settings.WEBHOOK_MAX_ATTEMPTS:
            raise
        alert_send.apply_async(
            kwargs={"payload": {**payload, "attempt": attempt + 1}},
            countdown=settings.WEBHOOK_RETRY_BASE_SECONDS * 2 ** (attempt - 1),
        )
