"""Budget alerts: the soft threshold and the hard limit, each once per budget and
period (a Redis SET NX decides), sent by a Celery task as a log line, an email
(Django's mail backend) and a signed webhook to the tenant's alert URL."""

from __future__ import annotations

import json
import logging
from typing import Any

from django.core.mail import send_mail

from apps.core.dispatch import task_send
from apps.core.redis import redis_client
from apps.core.webhooks import ERROR_NO_RESPONSE, WebhookFailed, WebhookRefused, webhook_headers, webhook_post
from apps.tenants.models import Tenant

from .money import format_usd
from .windows import COUNTER_GRACE, Budget, Window

logger = logging.getLogger(__name__)


def alert_once(
    *, schema: str, budget: Budget, window: Window, kind: str, spent: int, user_id: int, user_email: str
) -> bool:
    """Queue one alert of this kind for this budget and period; False if it was already sent."""
    who = "tenant" if budget.scope == "tenant" else f"user:{user_id}"
    key = f"aip:{{{schema}}}:alert:{who}:{window.ident}:{kind}"
    ttl = int((window.end + COUNTER_GRACE - window.start).total_seconds())
    if not redis_client().set(key, 1, nx=True, ex=ttl):
        return False
    payload = {
        "type": f"budget.{kind}",
        "tenant": schema,
        "scope": budget.scope,
        "user": user_email if budget.scope == "user" else None,
        "period": budget.period,
        "period_start": window.start.isoformat(),
        "period_end": window.end.isoformat(),
        "limit_usd": str(format_usd(budget.limit_micros)),
        "spent_usd": str(format_usd(spent)),
        "soft_percent": budget.soft_percent,
    }
    task_send("alerts.send", kwargs={"payload": payload})
    return True


def alert_deliver(payload: dict[str, Any]) -> None:
    """Log it, mail it, post it (signed). Raises when the webhook failed, so the
    task retries; the log line and the mail are sent on the first attempt only
    (`attempt` in the payload)."""
    tenant = Tenant.objects.get(schema_name=payload["tenant"])
    whose = payload["user"] or f"tenant {tenant.schema_name}"
    what = "soft threshold" if payload["type"] == "budget.soft" else "hard limit"
    summary = (
        f"Budget {what} reached for {whose}: {payload['spent_usd']} of the {payload['period']}ly "
        f"{payload['limit_usd']} (period ends {payload['period_end']})."
    )
    if payload.get("attempt", 1) == 1:
        logger.warning("budget alert: %s", summary)
        if tenant.alert_email:
            send_mail(
                subject=f"[aiplatform] {summary[:120]}",
                message=summary,
                from_email=None,
                recipient_list=[tenant.alert_email],
            )
    if tenant.alert_webhook_url:
        body = json.dumps(payload, separators=(",", ":")).encode()
        message_id = f"alert_{payload['tenant']}_{payload['period_start']}_{payload['type']}_{payload['user']}"
        headers = webhook_headers(secret=tenant.webhook_secret, message_id=message_id, body=body)
        # The same rules as completion webhooks: http(s) only, the checked address
        # is the one connected to, no redirect followed, one deadline.
        try:
            status = webhook_post(tenant.alert_webhook_url, body=body, headers=headers, param="alert_webhook_url")
        except WebhookRefused as exc:
            logger.error("budget alert webhook refused for %s: %s", tenant.schema_name, exc.message)
            if exc.reason != ERROR_NO_RESPONSE:
                return  # a URL we may not call: retrying cannot help
            raise WebhookFailed(exc.message) from exc
        if not 200 <= status < 300:
            raise WebhookFailed(f"the alert webhook answered {status}", status=status)  # the task retries
