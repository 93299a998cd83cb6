"""Completion webhook delivery (queue `webhooks`), retried with exponential backoff."""

from __future__ import annotations

import random
import uuid

from django.conf import settings

from aiplatform.celery import app
from apps.jobs.webhooks import webhook_deliver

# A delivery is bounded by its own deadline (DNS, then WEBHOOK_TIMEOUT_SECONDS for
# the HTTP exchange); the task limits are the backstop above it, where the pool
# enforces them (the webhooks worker's threads cannot be interrupted).
WEBHOOK_SOFT_TIME_LIMIT = settings.WEBHOOK_DNS_TIMEOUT_SECONDS + settings.WEBHOOK_TIMEOUT_SECONDS + 15
WEBHOOK_TIME_LIMIT = WEBHOOK_SOFT_TIME_LIMIT + 15


@app.task(
    name="webhooks.send",
    acks_late=True,
    ignore_result=True,
    soft_time_limit=WEBHOOK_SOFT_TIME_LIMIT,
    time_limit=WEBHOOK_TIME_LIMIT,
)
def webhook_send(*, job_id: str, attempt: int) -> None:
    """One attempt; on failure, the next one after base x 2^(attempt-1) seconds
    (with jitter), until WEBHOOK_MAX_ATTEMPTS. Each attempt is its own message, so
    a worker restart loses no schedule beyond the broker's own guarantees."""
    if webhook_deliver(job_id=uuid.UUID(job_id), attempt=attempt):
        return
    if attempt >= settings.WEBHOOK_MAX_ATTEMPTS:
        return
    delay = settings.WEBHOOK_RETRY_BASE_SECONDS * 2 ** (attempt - 1)
    webhook_send.apply_async(
        kwargs={"job_id": job_id, "attempt": attempt + 1}, countdown=delay * random.uniform(1.0, 1.25)
    )
