"""A job's ends other than a model's answer (execute.py has that one): answered
from the cache, failed, cancelled, switched off; and the single flights a job
leads, whose followers it answers or releases when it ends. Each end is guarded
by the job's status, so a race (a cancel and a worker, two messages) ends it once.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from django.utils import timezone

from apps.accounts.selectors import Principal
from apps.billing.budgets import budget_release
from apps.billing.services import ledger_cached
from apps.cache.exact import CachedAnswer, flight_land
from apps.cache.policy import CachePlan
from apps.cache.stats import cache_count
from apps.catalog.selectors import ModelSpec, model_get
from apps.core.errors import Conflict, NotFound
from apps.observability import metrics
from apps.tenants.db import current_schema

from .enqueue import job_enqueue, job_revoke
from .events import EventRelay, finish_reasons, job_events_close, stored_answer_events
from .models import Job, JobStatus
from .selectors import job_get
from .settlement import job_tokens_settle
from .stops import cancel_flag_set
from .webhooks import webhook_schedule

logger = logging.getLogger(__name__)

# What a cached answer writes on a stored job.
_ANSWER_FIELDS = (
    "status",
    "cached",
    "cache_similarity",
    "output",
    "tool_calls",
    "refusal",
    "logprobs",
    "choices",
    "system_fingerprint",
    "finish_reason",
    "input_tokens",
    "output_tokens",
    "usage_estimated",
    "response_model",
    "cost_micros",
    "started_at",
    "finished_at",
    "attempt_log",
    "answered_by",
    "tier",
)


def answer_fill(job: Job, answer: CachedAnswer, *, kind: str = "exact", similarity: float | None = None) -> None:
    """Fill a job (in memory) with a cached answer."""
    now = timezone.now()
    job.status = JobStatus.SUCCEEDED
    job.cached = kind
    job.cache_similarity = similarity
    job.output = answer.output
    job.tool_calls = answer.tool_calls
    job.refusal = answer.refusal
    job.logprobs = answer.logprobs
    job.choices = answer.choices
    job.system_fingerprint = answer.system_fingerprint
    job.finish_reason = answer.finish_reason
    job.input_tokens = answer.input_tokens
    job.output_tokens = answer.output_tokens
    job.usage_estimated = answer.usage_estimated
    job.response_model = answer.response_model
    job.cost_micros = 0
    job.started_at = job.finished_at = now


def answer_events(job: Job) -> tuple[dict[str, Any], ...]:
    """A whole answer as events (a cached one: its text and tool calls at once)."""
    done: dict[str, Any] = {"type": "done", "status": JobStatus.SUCCEEDED.value, "finish_reason": job.finish_reason}
    if job.choices:
        done["finish_reasons"] = finish_reasons(job)
    return (
        *stored_answer_events(job),
        {
            "type": "usage",
            "input_tokens": job.input_tokens,
            "output_tokens": job.output_tokens,
            "estimated": job.usage_estimated,
        },
        done,
    )


def job_cached_publish(*, job: Job, spec: ModelSpec, listeners: bool) -> None:
    """What a job answered from cache owes: a `cached` ledger entry (cost 0, what it
    saved), its events when it may have listeners (a job answered at submission has
    none yet: its event stream is served from Postgres), its webhook."""
    ledger_cached(
        user_id=job.user_id,
        spec=spec,
        input_tokens=job.input_tokens or 0,
        output_tokens=job.output_tokens or 0,
        job_id=job.pk,
    )
    if listeners:
        EventRelay(job_id=job.pk).final(*answer_events(job))
    webhook_schedule(job_id=job.pk, webhook_url=job.webhook_url)


def job_answer_from_cache(
    *,
    job: Job,
    spec: ModelSpec,
    answer: CachedAnswer,
    status: JobStatus,
    kind: str = "exact",
    similarity: float | None = None,
) -> bool:
    """Complete a stored job (queued or running, per `status`) with a cached answer:
    succeeded at no cost, its hold and rate-limit tokens given back, published like
    an answer from the cache at submission. False when it had moved on (cancelled)."""
    answer_fill(job, answer, kind=kind, similarity=similarity)
    updated = Job.objects.filter(pk=job.pk, status=status).update(
        lease_expires_at=None, **{name: getattr(job, name) for name in _ANSWER_FIELDS}
    )
    if not updated:
        if status == JobStatus.RUNNING:  # cancelled while it ran: nobody else settles it
            budget_release(schema=current_schema(), job_id=job.pk)
            job_tokens_settle(job=job, spec=spec, used=None)
        return False
    budget_release(schema=current_schema(), job_id=job.pk)
    job_tokens_settle(job=job, spec=spec, used=None)
    metrics.record_job_status(JobStatus.SUCCEEDED)
    job_cached_publish(job=job, spec=spec, listeners=True)
    return True


def job_flight_land(*, job: Job, plan: CachePlan, answer: CachedAnswer | None, spec: ModelSpec | None = None) -> None:
    """End the single flight this job led: its followers get its answer (the
    requested model's own, or an exact cache entry: what they asked for), or,
    when it has none (it failed, was cancelled, answered otherwise), are enqueued
    to run on their own."""
    followers = flight_land(schema=current_schema(), key=plan.key, job_id=job.pk)
    if answer is None or spec is None:
        jobs_followers_run(followers)
        return
    for follower_id in followers:
        follower = Job.objects.select_related("user").filter(pk=follower_id).first()
        if follower is None:
            continue
        if job_answer_from_cache(job=follower, spec=spec, answer=answer, status=JobStatus.QUEUED):
            cache_count(schema=current_schema(), field="flight_follower")
            logger.info("job %s answered by job %s (single flight)", follower.pk, job.pk)


def jobs_followers_run(followers: list[uuid.UUID]) -> None:
    """The followers of a flight that ended without an answer for them: each runs
    on its own. One whose row is not committed yet finds its flight gone when it
    is, and sends itself (apps.jobs.submit)."""
    for follower_id in followers:
        model = Job.objects.filter(pk=follower_id).values_list("model", flat=True).first()
        if model is not None:
            job_enqueue(job_id=follower_id, model=model)


def job_flight_abandon(*, job: Job) -> None:
    """A job that ends without an answer of its own (cancelled, switched off,
    failed by its task) releases the identical requests that waited for it."""
    plan = CachePlan.from_json(job.cache)
    if plan is not None and plan.key:
        job_flight_land(job=job, plan=plan, answer=None)


def job_cancel(*, principal: Principal, job_id: uuid.UUID | str) -> Job:
    job = job_get(principal=principal, job_id=job_id)
    if job is None:
        raise NotFound(f"No job with id {job_id}.", param="id")
    # Queued and running are told apart by the UPDATE itself, not by the row read
    # above: a worker may have claimed the job since.
    ending = {"status": JobStatus.CANCELLED, "finished_at": timezone.now(), "lease_expires_at": None}
    was_queued = bool(Job.objects.filter(pk=job.pk, status=JobStatus.QUEUED).update(**ending))
    if not was_queued and not Job.objects.filter(pk=job.pk, status=JobStatus.RUNNING).update(**ending):
        job.refresh_from_db(fields=["status"])
        raise Conflict(f"Job {job.pk} is already {job.status} and cannot be cancelled.", code="job_not_cancellable")
    if not was_queued:
        # Its worker stops the call within JOB_STOP_CHECK_SECONDS and charges what it
        # used; set before the stream closes, so the worker appends nothing after it.
        cancel_flag_set(schema=principal.tenant_schema, job_id=job.pk)
    metrics.record_job_status(JobStatus.CANCELLED)
    job_events_close(job_id=job.pk, status=JobStatus.CANCELLED.value)
    if was_queued:
        # Never ran: its hold and its tokens go back now. A running job's worker
        # settles it (the provider is already working, and charges for it).
        budget_release(schema=principal.tenant_schema, job_id=job.pk)
        spec = model_get(job.model)
        if spec is not None:
            job_tokens_settle(job=job, spec=spec, used=None)
        job_revoke(job_id=job.pk)
        job_flight_abandon(job=job)
    webhook_schedule(job_id=job.pk, webhook_url=job.webhook_url)  # last: the accounting above may not wait on it
    job.refresh_from_db()
    return job


def job_cancel_switched(*, job: Job, what: str, reason: str) -> None:
    """A job claimed after a kill switch flipped: cancelled, never run."""
    cancelled = Job.objects.filter(pk=job.pk, status=JobStatus.RUNNING).update(
        status=JobStatus.CANCELLED,
        error_type="ai_disabled",
        error_message=f"AI was switched off for {what} before the job ran: {reason}",
        finished_at=timezone.now(),
        lease_expires_at=None,
    )
    budget_release(schema=current_schema(), job_id=job.pk)
    spec = model_get(job.model)
    if spec is not None:
        job_tokens_settle(job=job, spec=spec, used=None)
    if cancelled:
        metrics.record_job_status(JobStatus.CANCELLED)
        logger.info("job %s cancelled in the worker: AI is switched off for %s", job.pk, what)
        job_events_close(job_id=job.pk, status=JobStatus.CANCELLED.value)
        webhook_schedule(job_id=job.pk, webhook_url=job.webhook_url)
    job_flight_abandon(job=job)


def job_fail(
    *,
    job_id: uuid.UUID,
    error_type: str,
    message: str,
    status: int | None = None,
    code: str | None = None,
    param: str | None = None,
    retry_after: float | None = None,
    webhook_url: str | None = None,
    attempt_log: list[dict[str, Any]] | None = None,
    attempt: int | None = None,
) -> None:
    """Fail a running job: record the error (and the attempts made), tell
    listeners, send its webhook (`webhook_url` saves a query when the caller has
    the job at hand). With `attempt` (a worker's), only while that attempt still
    owns the job: one taken over meanwhile is the new attempt's to end."""
    extra: dict[str, Any] = {"attempt_log": attempt_log} if attempt_log is not None else {}
    owned: dict[str, Any] = {"attempts": attempt} if attempt is not None else {}
    failed = Job.objects.filter(pk=job_id, status=JobStatus.RUNNING, **owned).update(
        **extra,
        status=JobStatus.FAILED,
        error_type=error_type,
        error_code=code or "",
        error_param=param or "",
        error_message=message,
        error_status=status,
        finished_at=timezone.now(),
        lease_expires_at=None,
    )
    # The hold goes back when this failed the job, or when the job was cancelled
    # while it ran (its worker settles it). Not for a job that ended otherwise (a
    # success whose later step raised): its hold was settled, or is the sweep's.
    if failed or Job.objects.filter(pk=job_id, status=JobStatus.CANCELLED).exists():
        budget_release(schema=current_schema(), job_id=job_id)
    if failed:
        metrics.record_job_status(JobStatus.FAILED)
        logger.info("job %s failed: %s", job_id, error_type, extra={"error_type": error_type})
        EventRelay(job_id=job_id).final(
            {
                "type": "error",
                "error_type": error_type,
                "message": message,
                "provider_status": status,
                "code": code,
                "param": param,
                "retry_after": retry_after,
            }
        )
        if webhook_url is None:
            webhook_url = Job.objects.filter(pk=job_id).values_list("webhook_url", flat=True).first() or ""
        webhook_schedule(job_id=job_id, webhook_url=webhook_url)


def job_fail_unexpectedly(*, job_id: uuid.UUID, error_type: str, message: str) -> None:
    """The task's last resort (a time limit, a bug): fail the job and release the
    identical requests that waited for it."""
    job_fail(job_id=job_id, error_type=error_type, message=message)
    job = Job.objects.filter(pk=job_id).first()
    if job is not None:
        job_flight_abandon(job=job)
