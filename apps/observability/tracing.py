"""The OpenTelemetry SDK, configured by the standard environment variables.

- `OTEL_TRACES_EXPORTER`: `otlp` (OTLP over HTTP to `OTEL_EXPORTER_OTLP_ENDPOINT`
  or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`), `console` (spans printed as JSON, for
  development) or `none`. Unset: `otlp` when an OTLP endpoint is set, else none.
- `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER(_ARG)`,
  `OTEL_BSP_*`, `OTEL_EXPORTER_OTLP_HEADERS`...: read by the SDK itself.
- `OTEL_SDK_DISABLED=true`: nothing at all.

With no exporter nothing is installed: the API's no-op tracer costs nothing and
no instrumentation wraps the web app or the Celery signals. With one, the web's
ASGI app is wrapped (a SERVER span per request, its parent taken from the
incoming `traceparent`), Celery publishes the trace context in each task's
message and the worker's task span continues it, and each provider call is a
GenAI CLIENT span (`genai.py`).

`OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true` records prompts and
answers on GenAI spans; by default they are never recorded.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.trace.export import SpanExporter

logger = logging.getLogger(__name__)

_lock = threading.Lock()
_enabled = False
_provider: Any = None


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _exporter_from_env() -> SpanExporter | None:
    choice = os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if not choice:
        endpoint = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        choice = "otlp" if endpoint else "none"
    if choice == "none":
        return None
    if choice == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    if choice == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    raise ValueError(f"OTEL_TRACES_EXPORTER={choice!r} is not supported here: use otlp, console or none.")


def tracing_init(*, service: str, exporter: SpanExporter | None = None, batch: bool = True) -> bool:
    """Install the SDK's tracer provider (once per process) and instrument Celery.
    `exporter` overrides the environment (tests pass an in-memory one, unbatched).
    True when traces are recorded."""
    global _enabled, _provider
    with _lock:
        if _enabled:
            return True
        if _env_true("OTEL_SDK_DISABLED"):
            return False
        exporter = exporter or _exporter_from_env()
        if exporter is None:
            return False
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

        # OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES, when set, win over the default name.
        named = "OTEL_SERVICE_NAME" in os.environ or "service.name=" in os.environ.get("OTEL_RESOURCE_ATTRIBUTES", "")
        resource = Resource.create() if named else Resource.create({SERVICE_NAME: service})
        provider = TracerProvider(resource=resource)
        provider.add_span_processor(BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter))
        trace.set_tracer_provider(provider)
        _provider = provider

        from opentelemetry.instrumentation.celery import CeleryInstrumentor

        CeleryInstrumentor().instrument(tracer_provider=provider)
        _enabled = True
        logger.info("tracing on: %s spans from service %s", type(exporter).__name__, service)
        return True


def tracing_enabled() -> bool:
    return _enabled


def tracing_flush(timeout_millis: int = 5_000) -> None:
    """Export what is buffered (a worker shutting down, a test reading spans)."""
    if _provider is not None:
        _provider.force_flush(timeout_millis)


def tracer() -> trace.Tracer:
    return trace.get_tracer("aiplatform")


def capture_content() -> bool:
    """Whether GenAI spans may record prompts and answers (off unless opted in)."""
    return _env_true("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT")


def traced_asgi(app: Any) -> Any:
    """The ASGI app, wrapped in OpenTelemetry's ASGI middleware when tracing is on:
    one SERVER span per request (no spans per send/receive message). Handlers
    rename it to the matched route once Django has resolved it (see `name_server_span`)."""
    if not _enabled:
        return app
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

    # Prometheus's scrapes are not worth a trace each, unless the operator names the
    # URLs to skip (OTEL_PYTHON_ASGI_EXCLUDED_URLS or OTEL_PYTHON_EXCLUDED_URLS).
    excluded = os.environ.get("OTEL_PYTHON_ASGI_EXCLUDED_URLS") or os.environ.get("OTEL_PYTHON_EXCLUDED_URLS")
    return OpenTelemetryMiddleware(app, exclude_spans=["receive", "send"], excluded_urls=excluded or "/metrics$")


def name_server_span(method: str, route: str | None) -> None:
    """`POST /api/v1/jobs` rather than the raw path (a job id per span name)."""
    span = trace.get_current_span()
    if route and span.is_recording():
        route = "/" + route.lstrip("^/").rstrip("$")
        span.update_name(f"{method} {route}")
        span.set_attribute("http.route", route)
