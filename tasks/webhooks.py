"""Completion webhook delivery, retried with exponential backoff."""

from __future__ import annotations

import random
import uuid

from django.conf import settings

from aiplatform.celery import app
from apps.jobs.webhooks import webhook_deliver


@app.task(name="webhooks.send", acks_late=True, ignore_result=True)
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
