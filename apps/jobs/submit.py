"""Submitting a job (web process): admission (apps.admission, with the job's
list of steps), then the job row, then, once it is committed, its dispatch: a
cached answer is published, a follower waits for its flight's leader, anything
else goes to its model's queue. An Idempotency-Key replays the earlier job."""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from apps.accounts.selectors import Principal
from apps.admission.pipeline import Admission, Step, admit
from apps.admission.steps import (
    BudgetHold,
    Cache,
    Capabilities,
    Fallbacks,
    Model,
    SingleFlight,
    Size,
    Switches,
    Tenant,
    TokenBuckets,
    Webhook,
)
from apps.cache.exact import flight_waiting
from apps.cache.policy import CachePlan
from apps.catalog.selectors import ModelSpec
from apps.core.errors import Conflict
from apps.observability import metrics
from apps.observability.context import bind
from apps.ratelimit.limits import RateLimitState
from apps.tenants.db import current_schema

from .enqueue import job_enqueue
from .lifecycle import answer_fill, job_cached_publish, jobs_followers_run
from .models import Job, JobStatus

logger = logging.getLogger(__name__)

# What a job passes before it is stored, in order (see apps.admission).
JOB_ADMISSION: list[Step] = [
    Tenant(),
    Model(),
    Switches(),
    Size(),
    Capabilities(),
    Webhook(),
    Fallbacks(),
    Cache(),
    TokenBuckets(),
    BudgetHold(),
    SingleFlight(release=jobs_followers_run),
]


@dataclass(frozen=True)
class JobRequest:
    """A validated submission (the API's serializer builds it)."""

    model: str
    messages: list[dict[str, Any]]
    params: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    stream: bool = False
    webhook_url: str = ""
    cache: dict[str, Any] | None = None  # the request's `cache` option ({"mode", "ttl"}), if it sent one
    fallbacks: list[str] | None = None  # the request's own fallback models, if it named any

    def fingerprint(self) -> str:
        """Hash of the canonical request: what an Idempotency-Key replay must match."""
        fields = {
            "model": self.model,
            "messages": self.messages,
            "params": self.params,
            "metadata": self.metadata,
            "stream": self.stream,
            "webhook_url": self.webhook_url,
        }
        # Only when sent: fingerprints of earlier requests stay valid.
        if self.cache is not None:
            fields["cache"] = self.cache
        if self.fallbacks is not None:
            fields["fallbacks"] = self.fallbacks
        canonical = json.dumps(
            fields,
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=False,
        )
        return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class Submission:
    job: Job
    created: bool  # False: an Idempotency-Key replay of an earlier job
    limits: RateLimitState | None  # the caller's rate-limit buckets after admission


def job_submit(*, principal: Principal, request: JobRequest, idempotency_key: str | None = None) -> Submission:
    """Admit the request, store the job and dispatch it once committed.

    With an Idempotency-Key seen within the window, the earlier job comes back
    (created=False) when the body matches, and a body that differs is a 409.
    """
    fingerprint = request.fingerprint() if idempotency_key else ""
    if idempotency_key:
        replay = _idempotent_replay(principal=principal, key=idempotency_key, fingerprint=fingerprint)
        if replay is not None:
            return Submission(replay, False, None)
    admitted = admit(
        Admission(
            principal=principal,
            model=request.model,
            messages=request.messages,
            params=request.params,
            cache_option=request.cache,
            requested_fallbacks=request.fallbacks,
            webhook_url=request.webhook_url,
        ),
        JOB_ADMISSION,
    )
    with admitted as admission:  # what the steps took goes back if storing raises
        spec, plan = admission.model_spec, admission.plan
        job = Job(
            id=admission.id,
            user_id=principal.user_id,
            api_key_id=principal.key_id,
            model=spec.slug,
            requested_model=request.model if request.model != spec.slug else "",
            flags=admission.flags,
            messages=request.messages,
            params=request.params,
            metadata=request.metadata,
            stream=request.stream,
            input_tokens_estimate=admission.input_tokens,
            idempotency_key=idempotency_key or None,
            request_hash=fingerprint,
            webhook_url=request.webhook_url or admission.default_webhook_url,
        )
        if admission.answer is not None:  # answered now: no tokens, no budget, no worker
            job.cache = plan.as_json() if plan is not None else {}
            answer_fill(job, admission.answer)
        else:
            if admission.max_tokens is not None:  # what was held is what the provider is asked for
                job.params = {**request.params, "max_tokens": admission.max_tokens}
            job.reserved_micros = admission.held
            job.ratelimit_tokens = admission.tokens_taken
            job.enqueued_at = timezone.now()
            job.cache = plan.as_json() if plan is not None and (plan.key or plan.semantic) else {}
            job.fallbacks = admission.fallbacks
            bind(job_id=job.pk, model=spec.slug)
        job, created = _store(
            job, principal=principal, idempotency_key=idempotency_key, fingerprint=fingerprint, spec=spec,
            leader=admission.leader,
        )  # fmt: skip
    if not created:  # an idempotent replay (a concurrent twin won): this request made no job
        bind(job_id=job.pk)
        admitted.give_back()
        return Submission(job, False, None)
    if admission.answer is not None:
        bind(job_id=job.pk, model=spec.slug)
        metrics.record_job_status(JobStatus.SUCCEEDED)
        logger.info("job %s answered from the exact cache at submission", job.pk, extra={"cache": "exact"})
    else:
        metrics.record_job_status(JobStatus.QUEUED)
    return Submission(job, True, admission.limits)


def _store(
    job: Job,
    *,
    principal: Principal,
    idempotency_key: str | None,
    fingerprint: str,
    spec: ModelSpec,
    leader: uuid.UUID | None,
) -> tuple[Job, bool]:
    if idempotency_key:
        try:
            # A savepoint when the caller holds a transaction: losing the race below
            # must not abort the caller's work.
            with transaction.atomic():
                job.save(force_insert=True)
        except IntegrityError:
            # A concurrent request with the same key won the insert: answer as its replay.
            replay = _idempotent_replay(principal=principal, key=idempotency_key, fingerprint=fingerprint)
            if replay is None:
                raise
            return replay, False
    else:
        # One autocommitted INSERT: no BEGIN/COMMIT round trips on the hot path.
        job.save(force_insert=True)
    # Runs at once in autocommit mode (the row is committed), or when the caller's
    # transaction commits: a worker never sees a job that is not there.
    transaction.on_commit(functools.partial(_dispatch, job=job, spec=spec, leader=leader))
    return job, True


def _dispatch(*, job: Job, spec: ModelSpec, leader: uuid.UUID | None) -> None:
    """A stored job's next step: a cached answer is published (ledger, events,
    webhook); a follower of a single flight waits for its leader, which completes
    it when it lands (unless it landed before this row was committed: then the job
    runs on its own); any other job is enqueued."""
    if job.status == JobStatus.SUCCEEDED:
        job_cached_publish(job=job, spec=spec, listeners=False)
        return
    if leader is not None:
        plan = CachePlan.from_json(job.cache)
        if plan is not None and flight_waiting(schema=current_schema(), key=plan.key, job_id=job.pk):
            logger.info("job %s follows job %s (identical request in flight)", job.pk, leader)
            return
    logger.info("job %s queued for %s", job.pk, job.model)
    try:
        job_enqueue(job_id=job.pk, model=job.model)
    except Exception:
        # The job is stored, and holds its budget and tokens: it stays queued and
        # the sweeper sends it after JOB_REQUEUE_AFTER_SECONDS. The caller gets the
        # 202 that says so, never a 500 for a job that runs later.
        logger.exception("job %s stored but not sent to its queue (broker unreachable); the sweeper will", job.pk)


def _idempotent_replay(*, principal: Principal, key: str, fingerprint: str) -> Job | None:
    existing = Job.objects.filter(user_id=principal.user_id, idempotency_key=key).first()
    if existing is None:
        return None
    window_start = timezone.now() - timedelta(seconds=settings.IDEMPOTENCY_WINDOW_SECONDS)
    if existing.created_at < window_start:
        # Expired: release the key so a new job can take it.
        Job.objects.filter(pk=existing.pk, idempotency_key=key).update(idempotency_key=None)
        return None
    if existing.request_hash != fingerprint:
        raise Conflict(
            "This Idempotency-Key was used with a different request body. Use a new key for a new request.",
            code="idempotency_key_reused",
            param="Idempotency-Key",
        )
    return existing
