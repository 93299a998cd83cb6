"""The sweeper repairs what a lost broker message or a dead worker left behind."""

from __future__ import annotations

from datetime import timedelta

from django.utils import timezone
from django_tenants.utils import tenant_context

from apps.jobs.execute import MAX_CLAIMS, job_claim
from apps.jobs.models import Job, JobStatus
from apps.jobs.sweep import jobs_requeue_stale
from tasks.jobs import jobs_requeue_stale_all
from tests.support import Personas, job_until_final


def _job(personas: Personas, **fields) -> Job:
    return Job.objects.create(
        user_id=personas.alice.user_id,
        model="local-small",
        messages=[{"role": "user", "content": "lost"}],
        **fields,
    )


def test_lost_queued_job_is_requeued_and_then_runs(worker, committed_personas: Personas, upstream):
    """A job whose message vanished (Redis lost it) is re-sent by the beat sweep."""
    long_ago = timezone.now() - timedelta(hours=1)
    with tenant_context(committed_personas.alice.tenant):
        job = _job(committed_personas, enqueued_at=long_ago, created_at=long_ago)  # never enqueued
    jobs_requeue_stale_all()  # the beat task, across tenants
    final = job_until_final(committed_personas.alice.client(), str(job.pk))
    assert final["status"] == "succeeded"
    assert upstream.stats()["chat_per_model"]["local-small"] == 1


def test_recently_queued_job_is_left_alone(personas: Personas):
    with tenant_context(personas.alice.tenant):
        _job(personas, enqueued_at=timezone.now())
        assert jobs_requeue_stale().requeued == 0


def test_running_job_with_expired_lease_can_be_taken_over(personas: Personas):
    with tenant_context(personas.alice.tenant):
        job = _job(
            personas, status=JobStatus.RUNNING, attempts=1, lease_expires_at=timezone.now() - timedelta(seconds=1)
        )
        claimed = job_claim(job_id=job.pk)
        assert claimed is not None
        assert claimed.attempts == 2


def test_running_job_with_live_lease_is_not_claimed_twice(personas: Personas):
    with tenant_context(personas.alice.tenant):
        job = _job(personas)
        assert job_claim(job_id=job.pk) is not None
        assert job_claim(job_id=job.pk) is None


def test_job_whose_worker_keeps_dying_is_failed(personas: Personas):
    with tenant_context(personas.alice.tenant):
        job = _job(
            personas,
            status=JobStatus.RUNNING,
            attempts=MAX_CLAIMS,
            lease_expires_at=timezone.now() - timedelta(seconds=1),
            enqueued_at=timezone.now() - timedelta(hours=1),
        )
        result = jobs_requeue_stale()
        job.refresh_from_db()
    assert result.failed == 1
    assert job.status == JobStatus.FAILED
    assert job.error_type == "worker_lost"
