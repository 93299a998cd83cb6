"""The Celery app. `tenant_schemas_celery` carries the sender's schema in each
message's headers and switches the worker's connection to it before the task runs."""

import os

from celery.signals import worker_ready
from tenant_schemas_celery.app import CeleryApp

from aiplatform.broker import install as install_broker_transport
from apps.observability import celery as _observability  # noqa: F401  (connects its signal handlers)

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "aiplatform.settings.dev")

install_broker_transport()
app = CeleryApp("aiplatform")
app.config_from_object("django.conf:settings", namespace="CELERY")


@worker_ready.connect
def _warm_up(**kwargs: object) -> None:
    """Load the tokenizer, and import the local embedder's libraries when they
    are installed, before the first job instead of during it."""
    from apps.cache.local_embedder import import_runtime
    from apps.llm.tokens import warm_up

    warm_up()
    import_runtime()
