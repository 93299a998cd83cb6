"""Job tasks. Each takes ids, calls one service, and owns only its retry policy."""

from __future__ import annotations

import logging
import sys
import uuid
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded
from celery.signals import worker_ready, worker_shutting_down
from django.conf import settings
from django_tenants.utils import get_tenant_model, tenant_context

from aiplatform.celery import app
from apps.jobs.execute import job_execute
from apps.jobs.heartbeat import handback_after
from apps.jobs.lifecycle import job_fail_unexpectedly
from apps.jobs.sweep import jobs_requeue_stale, leases_sweep
from apps.observability.context import annotate_span
from apps.observability.metrics import jobs_in_flight

logger = logging.getLogger(__name__)


@app.task(name="jobs.run", acks_late=True, ignore_result=True)
def job_run(*, job_id: str, model: str) -> None:
    """Run one job; `model` is only here for the router (tasks/queues.py). No Celery
    retry: a failed provider call ends the job, and a redelivery after a crash is
    handled by the job's own claim. Anything unexpected fails the job (so it does
    not sit in `running` until its lease runs out) and is re-raised for Sentry."""
    pk = uuid.UUID(job_id)
    annotate_span()  # the task's span (started by the instrumentation) names the tenant and job
    try:
        with jobs_in_flight(model).track_inprogress():
            job_execute(job_id=pk)
    except (SoftTimeLimitExceeded, TimeLimitExceeded):
        job_fail_unexpectedly(job_id=pk, error_type="timeout", message="The job exceeded its time limit.")
    except Exception:
        job_fail_unexpectedly(
            job_id=pk, error_type="internal_error", message="The worker failed while running this job."
        )
        raise
    except BaseException as exc:
        # The gevent pool's hard limit is a gevent.Timeout (a BaseException, past
        # `except Exception`): fail the job once, or it would sit in `running` and be
        # re-run when its lease expires. The job's own deadline (the catalog's
        # job_timeout_seconds) normally ends it well before.
        if _is_time_limit(exc):
            job_fail_unexpectedly(job_id=pk, error_type="timeout", message="The job exceeded its time limit.")
        raise


def _is_time_limit(exc: BaseException) -> bool:
    gevent = sys.modules.get("gevent")
    return gevent is not None and isinstance(exc, gevent.Timeout)


@app.task(name="jobs.requeue_stale", ignore_result=True)
def jobs_requeue_stale_all() -> None:
    """Beat, every minute: sweep each tenant schema (see jobs_requeue_stale)."""
    for tenant in get_tenant_model().objects.exclude(schema_name="public").filter(is_active=True):
        with tenant_context(tenant):
            result = jobs_requeue_stale()
        if result.requeued or result.failed:
            logger.warning(
                "sweep %s: requeued %d stale jobs, failed %d", tenant.schema_name, result.requeued, result.failed
            )


@app.task(name="jobs.leases_sweep", ignore_result=True)
def jobs_leases_sweep() -> None:
    """Beat, every JOB_LEASE_SWEEP_SECONDS: re-send the jobs whose worker stopped
    renewing their lease (see apps.jobs.sweep.leases_sweep)."""
    result = leases_sweep()
    if result.resent or result.failed:
        logger.warning("lease sweep: re-sent %d jobs, failed %d", result.resent, result.failed)


_consumer: Any = None  # this worker's consumer (worker_ready's sender)


@worker_ready.connect
def _remember_consumer(sender: Any = None, **kwargs: object) -> None:
    global _consumer
    _consumer = sender


def _stop_consuming() -> None:
    """Cancel this worker's queues: Celery's warm shutdown still takes messages
    while it waits for its pool, and a job handed back must go to another worker."""
    consumer = _consumer
    task_consumer = getattr(consumer, "task_consumer", None)
    if consumer is None or task_consumer is None:
        return
    for queue in list(task_consumer.queues):
        consumer.cancel_task_queue(queue.name)


@worker_shutting_down.connect
def _hand_back_on_shutdown(sig: str = "", how: str = "", **kwargs: object) -> None:
    """A warm shutdown (SIGTERM): this worker stops taking messages and Celery waits
    for the running tasks; after JOB_SHUTDOWN_GRACE_SECONDS the calls still running
    are stopped and their jobs handed back (apps.jobs.heartbeat), so the wait ends."""
    if how == "Warm":
        handback_after(settings.JOB_SHUTDOWN_GRACE_SECONDS, stop_consuming=_stop_consuming)
