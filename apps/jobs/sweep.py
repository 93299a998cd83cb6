"""The sweep (beat, once a minute per tenant): repair what a lost broker message
or a dead worker left behind."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from .enqueue import job_enqueue
from .execute import MAX_CLAIMS
from .lifecycle import job_fail
from .models import Job, JobStatus


@dataclass(frozen=True)
class SweepResult:
    requeued: int
    failed: int


def jobs_requeue_stale() -> SweepResult:
    """In the current tenant schema: re-send jobs queued for longer than
    JOB_REQUEUE_AFTER_SECONDS, re-send running jobs whose lease expired, and fail
    those that used up their claims. Re-sending is safe because claims are atomic."""
    now = timezone.now()
    stale_enqueue = now - timedelta(seconds=settings.JOB_REQUEUE_AFTER_SECONDS)
    # No worker can claim these any more (claims are capped), so failing them one by
    # one races with nothing; job_fail also closes their event streams and sends
    # their webhooks.
    poisoned = Job.objects.filter(
        status=JobStatus.RUNNING, lease_expires_at__lt=now, attempts__gte=MAX_CLAIMS
    ).values_list("pk", "webhook_url")[:1000]
    for job_id, webhook_url in poisoned:
        job_fail(
            job_id=job_id,
            error_type="worker_lost",
            message=f"The job's worker stopped {MAX_CLAIMS} times before finishing it.",
            webhook_url=webhook_url,
        )
    failed = len(poisoned)
    stale = Job.objects.filter(
        Q(status=JobStatus.QUEUED, enqueued_at__lt=stale_enqueue)
        | Q(status=JobStatus.RUNNING, lease_expires_at__lt=now, enqueued_at__lt=stale_enqueue)
    ).values_list("pk", "model")[:1000]
    requeued = 0
    for job_id, model in stale:
        if Job.objects.filter(pk=job_id, enqueued_at__lt=stale_enqueue).update(enqueued_at=now):
            job_enqueue(job_id=job_id, model=model)
            requeued += 1
    return SweepResult(requeued=requeued, failed=failed)
