"""Completion webhooks: when a job ends, a Celery task (queue `webhooks`, task
`webhooks.send`) POSTs `{id, status, model, output, tool_calls, choices, usage, error}` to the job's
webhook URL, signed with the tenant's secret. Failures are retried with
exponential backoff up to WEBHOOK_MAX_ATTEMPTS; every attempt is recorded on
the job. The URL checks, the safe POST and the signature are apps.core.webhooks'.
"""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any

from apps.core.dispatch import task_send
from apps.core.webhooks import (
    ERROR_NO_RESPONSE,
    WebhookFailed,
    WebhookRefused,
    webhook_headers,
    webhook_post,
)
from apps.tenants.db import tenant_connection

from .models import Job, WebhookDelivery

logger = logging.getLogger(__name__)


def webhook_payload(job: Job) -> dict[str, Any]:
    usage = None
    if job.input_tokens is not None and job.output_tokens is not None:
        usage = {"input_tokens": job.input_tokens, "output_tokens": job.output_tokens, "estimated": job.usage_estimated}
    error = None
    if job.error_type:
        error = {"type": job.error_type, "message": job.error_message, "provider_status": job.error_status}
    return {
        "id": str(job.pk),
        "status": job.status,
        "model": job.model,
        "output": job.output,
        "tool_calls": job.tool_calls,
        "choices": job.choices,
        "usage": usage,
        "error": error,
    }


def webhook_deliver(*, job_id: uuid.UUID, attempt: int) -> bool:
    """One delivery attempt, recorded on the job. True when delivered (or nothing is
    left to deliver, or the URL may not be called: retrying cannot help); False
    when the caller should retry."""
    job = Job.objects.filter(pk=job_id).first()
    if job is None or not job.webhook_url:
        return True
    if WebhookDelivery.objects.filter(job=job, succeeded=True).exists():
        return True  # a redelivered task: already done
    body = json.dumps(webhook_payload(job), separators=(",", ":")).encode()
    message_id = f"job_{job.pk}"
    headers = webhook_headers(secret=tenant_connection().tenant.webhook_secret, message_id=message_id, body=body)
    status_code: int | None = None
    error = ""
    retry = True
    try:
        # Checked again: DNS may have changed since submission.
        status_code = webhook_post(job.webhook_url, body=body, headers=headers)
    except WebhookRefused as exc:
        error = exc.reason
        retry = exc.reason == ERROR_NO_RESPONSE  # a lookup that failed may work later; a refusal will not
        logger.warning("webhook for job %s refused: %s", job.pk, exc.message)
    except WebhookFailed as exc:
        error = ERROR_NO_RESPONSE
        logger.warning("webhook for job %s failed: %s", job.pk, exc)
    succeeded = status_code is not None and 200 <= status_code < 300
    WebhookDelivery.objects.get_or_create(
        job=job,
        attempt=attempt,
        defaults={"url": job.webhook_url, "status_code": status_code, "error": error, "succeeded": succeeded},
    )
    return succeeded or not retry


def webhook_schedule(*, job_id: uuid.UUID, webhook_url: str) -> None:
    """Queue the job's first delivery. The broker unreachable: logged, not raised,
    so a job's end (its cancel, its answer) never fails for its webhook's sake."""
    if webhook_url:
        try:
            task_send("webhooks.send", kwargs={"job_id": str(job_id), "attempt": 1})
        except Exception:
            logger.exception("job %s: its webhook could not be queued (broker unreachable)", job_id)
