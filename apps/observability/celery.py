"""The request's identity, carried into the worker.

The publishing side adds the bound `request_id` to each task message's headers
(the trace context travels beside it, put there by OpenTelemetry's Celery
instrumentation when tracing is on). Before a task runs, its context is bound
from the message: `request_id`, `tenant` (the schema tenant-schemas-celery
switches to), and for a job its `job_id` and `model`; after it, the thread's
context is what it was before. Each worker process also serves its own metrics
on WORKER_METRICS_PORT when that is set (see `metrics.py`).
"""

from __future__ import annotations

import logging
import os
from typing import Any

from celery.signals import before_task_publish, task_postrun, task_prerun, worker_init, worker_ready

from . import context

logger = logging.getLogger(__name__)

REQUEST_ID_HEADER = "aip_request_id"
_TOKEN = "_aip_context_token"


@before_task_publish.connect
def _add_request_id(headers: dict[str, Any] | None = None, **kwargs: Any) -> None:
    request_id = context.current().get("request_id")
    if request_id and headers is not None:
        headers.setdefault(REQUEST_ID_HEADER, request_id)


def _header(task: Any, name: str) -> Any:
    # On the Redis transport a message's headers are merged into `task.request`.
    value = getattr(task.request, name, None)
    if value is None and task.request.headers:
        value = task.request.headers.get(name)
    return value


@task_prerun.connect
def _bind_task_context(task: Any = None, kwargs: dict[str, Any] | None = None, **extra: Any) -> None:
    if task is None:
        return
    kwargs = kwargs or {}
    token = context.start(
        request_id=_header(task, REQUEST_ID_HEADER),
        tenant=_header(task, "_schema_name"),
        job_id=kwargs.get("job_id"),
        model=kwargs.get("model"),
    )
    setattr(task.request, _TOKEN, token)


@task_postrun.connect
def _unbind_task_context(task: Any = None, **extra: Any) -> None:
    token = getattr(task.request, _TOKEN, None) if task is not None else None
    if token is not None:
        try:
            context.end(token)
        except ValueError:  # set in another context (never expected): start clean instead
            context.start()


@worker_init.connect
def _start_tracing(**kwargs: Any) -> None:
    from .tracing import tracing_init

    tracing_init(service="aiplatform-worker")


@worker_ready.connect
def _serve_worker_metrics(**kwargs: Any) -> None:
    port = int(os.environ.get("WORKER_METRICS_PORT", "0") or 0)
    if not port:
        return
    from prometheus_client import start_http_server

    from .metrics import registry

    host = os.environ.get("WORKER_METRICS_HOST", "127.0.0.1")
    start_http_server(port, addr=host, registry=registry())
    logger.info("worker metrics on http://%s:%d/metrics", host, port)
