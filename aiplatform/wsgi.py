"""WSGI entry point (the platform is served over ASGI: see asgi.py). Tracing, when
configured, still carries the trace context into the jobs this process enqueues."""

import os

from django.core.wsgi import get_wsgi_application

from apps.observability.tracing import tracing_init

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "aiplatform.settings.dev")
tracing_init(service="aiplatform-web")

application = get_wsgi_application()
