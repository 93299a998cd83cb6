"""Completion webhooks, signed in the Standard Webhooks style.

When a job ends, a Celery task POSTs `{id, status, model, output, usage, error}`
to the job's webhook URL with the headers `webhook-id`, `webhook-timestamp` and
`webhook-signature: v1,<base64 HMAC-SHA256(secret, "<id>.<timestamp>.<body>")>`,
keyed with the tenant's `whsec_` secret. Failures are retried with exponential
backoff up to WEBHOOK_MAX_ATTEMPTS; every attempt is recorded on the job. URLs that
resolve to private, loopback or otherwise non-public addresses are refused (at
submission and again at delivery, against DNS rebinding) unless the operator
allowed their network in WEBHOOK_ALLOWED_NETWORKS.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import socket
import time
import urllib.error
import urllib.request
import uuid
from typing import Any
from urllib.parse import urlparse

from django.conf import settings

from apps.core.errors import InvalidRequest
from apps.tenants.db import tenant_connection

from .models import Job, WebhookDelivery


def webhook_url_check(url: str, *, param: str = "webhook.url") -> None:
    """Refuse URLs a tenant must not make us call (SSRF): non-HTTP schemes and hosts
    that resolve to non-public addresses outside WEBHOOK_ALLOWED_NETWORKS."""
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise InvalidRequest("The webhook URL must be an http:// or https:// URL.", param=param)
    try:
        infos = socket.getaddrinfo(parsed.hostname, parsed.port or 443, proto=socket.IPPROTO_TCP)
    except OSError as exc:
        raise InvalidRequest(f"The webhook host {parsed.hostname!r} does not resolve.", param=param) from exc
    allowed = [ipaddress.ip_network(net) for net in settings.WEBHOOK_ALLOWED_NETWORKS]
    for info in infos:
        address = ipaddress.ip_address(info[4][0])
        if not address.is_global and not any(address in net for net in allowed):
            raise InvalidRequest(
                f"The webhook host {parsed.hostname!r} resolves to a non-public address ({address}).",
                code="webhook_url_not_allowed",
                param=param,
            )


def webhook_sign(*, secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{message_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def webhook_headers(*, secret: str, message_id: str, body: bytes) -> dict[str, str]:
    """Standard Webhooks headers for one delivery, signed now."""
    timestamp = int(time.time())
    return {
        "Content-Type": "application/json",
        "User-Agent": "aiplatform-webhooks/1",
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": webhook_sign(secret=secret, message_id=message_id, timestamp=timestamp, body=body),
    }


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
        "usage": usage,
        "error": error,
    }


def webhook_deliver(*, job_id: uuid.UUID, attempt: int) -> bool:
    """One delivery attempt, recorded on the job. True when delivered (or nothing is
    left to deliver); False when the caller should retry."""
    job = Job.objects.filter(pk=job_id).first()
    if job is None or not job.webhook_url:
        return True
    if WebhookDelivery.objects.filter(job=job, succeeded=True).exists():
        return True  # a redelivered task: already done
    body = json.dumps(webhook_payload(job), separators=(",", ":")).encode()
    message_id = f"job_{job.pk}"
    headers = webhook_headers(secret=tenant_connection().tenant.webhook_secret, message_id=message_id, body=body)
    status_code, error = None, ""
    try:
        webhook_url_check(job.webhook_url)  # again: DNS may have changed since submission
        request = urllib.request.Request(job.webhook_url, data=body, headers=headers, method="POST")
        with urllib.request.urlopen(request, timeout=settings.WEBHOOK_TIMEOUT_SECONDS) as response:
            status_code = response.status
    except urllib.error.HTTPError as exc:
        status_code, error = exc.code, f"HTTP {exc.code}"
    except InvalidRequest as exc:
        error = exc.message
    except OSError as exc:
        error = str(exc)
    succeeded = status_code is not None and 200 <= status_code < 300
    WebhookDelivery.objects.get_or_create(
        job=job,
        attempt=attempt,
        defaults={"url": job.webhook_url, "status_code": status_code, "error": error[:2000], "succeeded": succeeded},
    )
    return succeeded


def webhook_schedule(*, job_id: uuid.UUID, webhook_url: str) -> None:
    if webhook_url:
        from tasks.webhooks import webhook_send

        webhook_send.apply_async(kwargs={"job_id": str(job_id), "attempt": 1})
