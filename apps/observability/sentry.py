"""Sentry, when SENTRY_DSN is set, with the Django and Celery integrations.

Every event is tagged with the bound context (`tenant`, `job_id`, `user`,
`model`, `request_id`: see `context.py`), read when the event is sent, so a
tag always belongs to the request or task that raised it (a thread reused by
the next request carries nothing over).

Prompts and answers are never sent: no request bodies, no local variables in
stack frames (a frame's locals would hold the messages), no default PII, and
`before_send` drops any request data and task arguments an integration added.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ImproperlyConfigured

from .context import FIELDS, current


def before_send(event: dict[str, Any], hint: dict[str, Any]) -> dict[str, Any] | None:
    fields = current()
    tags = event.setdefault("tags", {})
    for name in FIELDS:
        value = fields.get(name)
        if value is not None:
            tags[name] = str(value)
    request = event.get("request")
    if isinstance(request, dict):
        request.pop("data", None)
        request.pop("cookies", None)
    extra = event.get("extra")
    job = extra.get("celery-job") if isinstance(extra, dict) else None
    if isinstance(job, dict):  # keep the task's name, not its arguments
        extra["celery-job"] = {"task_name": job.get("task_name")}  # type: ignore[index]
    return event


def init_sentry(*, dsn: str, environment: str, transport: Any = None) -> None:
    """`transport`: tests pass one that keeps the envelopes instead of sending them."""
    if not dsn:
        return
    import sentry_sdk
    from sentry_sdk.integrations.celery import CeleryIntegration
    from sentry_sdk.integrations.django import DjangoIntegration
    from sentry_sdk.utils import BadDsn

    options: dict[str, Any] = {"transport": transport} if transport is not None else {}
    try:
        sentry_sdk.init(
            dsn=dsn,
            environment=environment,
            integrations=[DjangoIntegration(), CeleryIntegration()],
            # No user identity, no request bodies, no task arguments, no prompts or
            # answers from the SDK's AI integrations, no local variables in frames.
            data_collection={
                "user_info": False,
                "http_bodies": [],
                "queues": False,
                "gen_ai": {"inputs": False, "outputs": False},
                "database_query_data": False,
                "stack_frame_variables": False,
            },
            max_request_body_size="never",
            include_local_variables=False,
            before_send=before_send,  # type: ignore[arg-type]
            **options,
        )
    except BadDsn as exc:
        raise ImproperlyConfigured(f"SENTRY_DSN is not a valid Sentry DSN: {exc}") from exc
