"""The sweeps that repair what a lost broker message or a dead worker left
behind: the lease sweep (beat, every JOB_LEASE_SWEEP_SECONDS), which reads only
the lease index (heartbeat.py) and the rows it names, and the minute sweep per
tenant, which finds what the index cannot know of (a message lost with Redis)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import DatabaseError
from django.db.models import Q
from django.utils import timezone

from apps.core.redis import redis_client
from apps.observability import metrics
from apps.tenants.db import tenant_connection

from .enqueue import job_enqueue
from .execute import MAX_CLAIMS
from .heartbeat import LEASES_KEY, lease_expiry, lease_member
from .models import FINAL_STATUSES, Job, JobStatus
from .restarts import job_fail_lost

logger = logging.getLogger(__name__)


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
    poisoned = list(
        Job.objects.filter(status=JobStatus.RUNNING, lease_expires_at__lt=now, attempts__gte=MAX_CLAIMS)[:1000]
    )
    for job in poisoned:
        job_fail_lost(job=job)
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


@dataclass(frozen=True)
class LeaseSweep:
    resent: int  # jobs whose lease ran out, re-sent for a takeover
    failed: int  # jobs whose workers were lost MAX_CLAIMS times
    dropped: int  # index entries of jobs that ended


def leases_sweep(*, limit: int = 500) -> LeaseSweep:
    """Re-send the jobs whose lease ran out (their worker died or stalled): the
    first worker to claim one starts it over. One ZRANGEBYSCORE on the index, then
    one query per tenant schema that has expired entries; a re-sent job's entry is
    due again a lease later, in case that message is lost too."""
    client = redis_client()
    now = timezone.now()
    due: Any = client.zrangebyscore(LEASES_KEY, "-inf", int(now.timestamp() * 1000), start=0, num=limit)
    by_schema: dict[str, list[str]] = {}
    for raw in due or ():
        schema, _, job_id = (raw.decode() if isinstance(raw, bytes) else raw).partition("/")
        by_schema.setdefault(schema, []).append(job_id)
    resent = failed = 0
    drop: list[str] = []
    later: dict[str, int] = {}
    for schema, ids in by_schema.items():
        tenant_connection().set_schema(schema)
        try:
            jobs = {str(job.pk): job for job in Job.objects.filter(pk__in=ids)}
        except DatabaseError as exc:  # a schema that went away: its entries with it
            logger.warning("lease sweep: cannot read %s: %s", schema, exc)
            drop += [lease_member(schema=schema, job_id=job_id) for job_id in ids]
            continue
        for job_id in ids:
            member, job = lease_member(schema=schema, job_id=job_id), jobs.get(job_id)
            if job is None or job.status in FINAL_STATUSES:
                drop.append(member)
            elif job.status == JobStatus.RUNNING and job.lease_expires_at and job.lease_expires_at > now:
                later[member] = int(job.lease_expires_at.timestamp() * 1000)  # renewed in Postgres only
            elif job.status == JobStatus.RUNNING and job.attempts >= MAX_CLAIMS:
                job_fail_lost(job=job)
                drop.append(member)
                failed += 1
            else:  # running on a dead lease (or queued, its claimer lost before it claimed)
                job_enqueue(job_id=job.pk, model=job.model)
                later[member] = int(lease_expiry(now).timestamp() * 1000)
                resent += 1
                logger.warning("lease sweep: job %s (attempt %d) lost its worker; re-sent", job.pk, job.attempts)
    pipe = client.pipeline(transaction=False)
    if drop:
        pipe.zrem(LEASES_KEY, *drop)
    if later:
        pipe.zadd(LEASES_KEY, later)
    pipe.execute()
    tenant_connection().set_schema_to_public()
    metrics.record_takeover("worker_lost", resent)
    return LeaseSweep(resent=resent, failed=failed, dropped=len(drop))
