"""Sentry, when SENTRY_DSN is set. Prompts and answers are never sent: no PII, no
request bodies. (Tenant and job tags arrive with the observability issue.)"""

from __future__ import annotations

from django.core.exceptions import ImproperlyConfigured


def init_sentry(*, dsn: str, environment: str) -> None:
    if not dsn:
        return
    import sentry_sdk
    from sentry_sdk.integrations.celery import CeleryIntegration
    from sentry_sdk.integrations.django import DjangoIntegration
    from sentry_sdk.utils import BadDsn

    try:
        sentry_sdk.init(
            dsn=dsn,
            environment=environment,
            integrations=[DjangoIntegration(), CeleryIntegration()],
            send_default_pii=False,
            max_request_body_size="never",
            include_local_variables=False,
        )
    except BadDsn as exc:
        raise ImproperlyConfigured(f"SENTRY_DSN is not a valid Sentry DSN: {exc}") from exc
