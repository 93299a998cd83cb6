"""Job lifecycle: submit (web), execute (worker), cancel, and the sweep that
repairs jobs whose Celery message was lost."""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import random
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import redis
from django.conf import settings
from django.db import DatabaseError, IntegrityError, connection, transaction
from django.db.models import Q
from django.utils import timezone

from apps.accounts.selectors import Principal
from apps.billing.budgets import (
    SETTLED_TTL_SECONDS,
    budget_after_charge,
    budget_hold,
    budget_hold_time,
    budget_release,
    budget_settle,
)
from apps.billing.models import LedgerKind
from apps.billing.services import call_cost, chain_fit, chain_worst_case, ledger_cached, ledger_record
from apps.cache.embedder import EmbedderError, PromptTooLong
from apps.cache.exact import CachedAnswer, exact_get, exact_put, flight_join, flight_land
from apps.cache.policy import CacheMode, CachePlan, cache_plan, policy_for
from apps.cache.semantic import SemanticLookup, semantic_key, semantic_lookup, semantic_store
from apps.cache.stats import cache_count
from apps.catalog.selectors import ModelSpec, model_get, models_enabled
from apps.controls.switches import switch_blocking, switch_check
from apps.core.errors import Conflict, InvalidRequest, NotFound, PayloadTooLarge
from apps.core.redis import redis_client
from apps.flags.rollout import Subject
from apps.flags.selectors import flags_route
from apps.llm.breaker import breaker_allow, breaker_record
from apps.llm.content import content_admit
from apps.llm.providers import CallStopped, CallWatch, ChatResult, ProviderError, chat_stream
from apps.llm.tokens import count_message_tokens, count_text_tokens
from apps.observability import metrics
from apps.observability.context import bind
from apps.observability.genai import provider_call
from apps.observability.tracing import tracing_enabled
from apps.ratelimit.buckets import Bucket, Unit
from apps.ratelimit.limits import RateLimitState, buckets_for, ratelimit_admit, ratelimit_reconcile, ratelimit_refund
from apps.tenants.db import current_schema, release_connection, tenant_connection

from .events import EventRelay, job_events_close
from .fallbacks import SEMANTIC_CACHE, fallbacks_for
from .models import Job, JobStatus
from .selectors import job_get
from .stops import cancel_flag_set, cancel_key, watching
from .webhooks import webhook_schedule, webhook_url_check

logger = logging.getLogger(__name__)


class CacheMiss(NotFound):
    """`cache.mode` "only" and no cached answer: nothing was called."""


# A job whose worker keeps dying (poison input, OOM) is failed after this many claims.
MAX_CLAIMS = 3


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


# --- Submission (web process) -------------------------------------------------


@dataclass(frozen=True)
class Submission:
    job: Job
    created: bool  # False: an Idempotency-Key replay of an earlier job
    limits: RateLimitState | None  # the caller's rate-limit buckets after admission


def job_submit(*, principal: Principal, request: JobRequest, idempotency_key: str | None = None) -> Submission:
    """Validate against the catalog, admit against rate limits and budgets, store
    the job and enqueue it once committed.

    With an Idempotency-Key seen within the window, the earlier job comes back
    (created=False) when the body matches, and a body that differs is a 409.
    """
    fingerprint = request.fingerprint() if idempotency_key else ""
    if idempotency_key:
        replay = _idempotent_replay(principal=principal, key=idempotency_key, fingerprint=fingerprint)
        if replay is not None:
            return Submission(replay, False, None)

    spec = _admissible_model(request.model)
    # Flags may route the request to a rollout model (evaluated before the kill
    # switch, which then applies to the model actually called).
    subject = Subject(principal.tenant_schema, principal.user_id, principal.email, principal.tier)
    routed, flags = flags_route(subject, spec.slug)
    if routed != spec.slug:
        rollout = model_get(routed)
        if rollout is not None and rollout.enabled:
            spec = rollout
        else:
            logger.warning("flag rollout model %r is unavailable; %s keeps %s", routed, flags, spec.slug)
            flags = {key: "off" for key in flags}
    switch_check(tenant_schema=principal.tenant_schema, user_id=principal.user_id, model=spec.slug)
    input_tokens = _check_size(spec, request)
    webhook_url = request.webhook_url or tenant_connection().tenant.webhook_url
    if request.webhook_url:
        webhook_url_check(request.webhook_url)
    schema = principal.tenant_schema
    fallbacks = fallbacks_for(tenant_schema=schema, tier=principal.tier, model=spec.slug, requested=request.fallbacks)
    plan = cache_plan(
        tenant_schema=schema,
        model=spec.slug,
        messages=request.messages,
        params=request.params,
        option=request.cache,
        user_id=principal.user_id,
    )
    # What every job of this request holds, answered from cache or not.
    common: dict[str, Any] = {
        "user_id": principal.user_id,
        "api_key_id": principal.key_id,
        "model": spec.slug,
        "requested_model": request.model if request.model != spec.slug else "",
        "flags": flags,
        "messages": request.messages,
        "params": request.params,
        "metadata": request.metadata,
        "stream": request.stream,
        "input_tokens_estimate": input_tokens,
        "idempotency_key": idempotency_key or None,
        "request_hash": fingerprint,
        "webhook_url": webhook_url,
    }
    if plan.lookup and plan.key:
        answer = exact_get(schema=schema, key=plan.key)
        metrics.record_cache_request("exact", hit=answer is not None)
        if answer is not None:
            # Answered now: no tokens, no budget, no worker; but a request is a
            # request (the user's and tenant's requests_per_minute), else a hit
            # would be a way around them.
            hit_buckets = _request_buckets(principal)
            hit_limits = ratelimit_admit(hit_buckets, 0, fail_open=tenant_connection().tenant.ratelimit_fail_open)
            cached = Job(**common, cache=plan.as_json())
            _answer_from_cache(cached, answer)
            job, created = _store(
                cached, principal=principal, idempotency_key=idempotency_key, fingerprint=fingerprint, spec=spec
            )
            bind(job_id=job.pk, model=spec.slug)
            if created:
                metrics.record_job_status(JobStatus.SUCCEEDED)
                logger.info("job %s answered from the exact cache at submission", job.pk, extra={"cache": "exact"})
            elif hit_limits is not None:
                ratelimit_refund(hit_buckets, tokens=0)  # a replay made no new request
            return Submission(job, created, hit_limits if created else None)
        if plan.mode is CacheMode.ONLY:
            raise CacheMiss(
                "No cached answer for this request, and cache.mode is 'only': no model was called.",
                code="cache_miss",
                param="cache.mode",
            )
    # Rate limits first (tokens), then budgets (the worst-case cost, held before the
    # job exists); each is given back if a later step refuses the request.
    job_id = uuid.uuid4()
    tokens = _estimated_tokens(spec, input_tokens=input_tokens, params=request.params)
    buckets = buckets_for(
        tenant_schema=principal.tenant_schema, user_id=principal.user_id, tier=principal.tier, spec=spec
    )
    fail_open = tenant_connection().tenant.ratelimit_fail_open
    limits = ratelimit_admit(buckets, tokens, fail_open=fail_open)
    taken = tokens if limits is not None else 0
    # The hold covers the dearest model the job may end up calling, at the output it
    # is sent. Larger than what is left of a budget: refused naming the max_tokens
    # that fits, or, when the request set none, held and sent at that max_tokens.
    steps = [spec, *(s for s in map(model_get, fallbacks) if s is not None)]
    requested_max = request.params.get("max_tokens")
    worst_case = chain_worst_case(steps, input_tokens=input_tokens, max_tokens=requested_max)
    cap = requested_max or max(step.max_output_tokens for step in steps)
    try:
        hold = budget_hold(
            principal=principal,
            job_id=job_id,
            amount_micros=worst_case,
            fit=lambda room: chain_fit(steps, input_tokens=input_tokens, cap=cap, room=room),
            adjust=requested_max is None,
        )
    except BaseException:
        if taken:
            ratelimit_refund(buckets, tokens=taken)
        raise
    held = hold.amount > 0
    if hold.max_tokens is not None:  # what was held is what the provider is asked for
        common["params"] = {**request.params, "max_tokens": hold.max_tokens}
    bind(job_id=job_id, model=spec.slug)
    try:
        job = Job(
            **common,
            id=job_id,
            reserved_micros=hold.amount,
            ratelimit_tokens=taken,
            enqueued_at=timezone.now(),
            cache=plan.as_json() if plan.key or plan.semantic else {},
            fallbacks=fallbacks,
        )
        stored = _store(job, principal=principal, idempotency_key=idempotency_key, fingerprint=fingerprint, spec=spec)
    except BaseException:
        if held:
            budget_release(schema=principal.tenant_schema, job_id=job_id)
        if taken:
            ratelimit_refund(buckets, tokens=taken)
        raise
    job, created = stored
    if not created:  # an idempotent replay (a concurrent twin won): this request made no job
        bind(job_id=job.pk)
        if held:
            budget_release(schema=principal.tenant_schema, job_id=job_id)
        if taken:
            ratelimit_refund(buckets, tokens=taken)
        return Submission(job, False, None)
    metrics.record_job_status(JobStatus.QUEUED)
    return Submission(job, True, limits)


def _request_buckets(principal: Principal) -> tuple[Bucket, ...]:
    """The caller's request buckets (user and tenant requests_per_minute): what a
    request answered from cache pays. Not the tokens, nor the model's buckets
    (no provider is called)."""
    buckets = buckets_for(
        tenant_schema=principal.tenant_schema, user_id=principal.user_id, tier=principal.tier, spec=None
    )
    return tuple(bucket for bucket in buckets if bucket.unit is Unit.REQUESTS)


def _estimated_tokens(spec: ModelSpec, *, input_tokens: int, params: dict[str, Any]) -> int:
    """What a request may use: its counted input and its output allowance."""
    return input_tokens + int(params.get("max_tokens") or spec.max_output_tokens)


def _reconcile_rate_limits(*, job: Job, spec: ModelSpec, used: int | None) -> None:
    """Settle what admission took from the rate-limit buckets: keep what the call
    used (`used` tokens), or give everything back when it never ran (None)."""
    if not job.ratelimit_tokens:
        return  # nothing was taken (no limit applied, or the limiter failed open)
    # Exactly once per job: a cancel racing the worker (or a redelivery) must not
    # give the tokens back twice. The first to set the marker settles.
    marker = f"aip:{{{current_schema()}}}:rlsettled:{job.pk}"
    if not redis_client().set(marker, 1, nx=True, ex=SETTLED_TTL_SECONDS):
        return
    buckets = buckets_for(tenant_schema=current_schema(), user_id=job.user_id, tier=job.user.tier, spec=spec)
    if used is None:
        ratelimit_refund(buckets, tokens=job.ratelimit_tokens)
    else:
        ratelimit_reconcile(buckets, estimated=job.ratelimit_tokens, used=used)


def _answer_from_cache(job: Job, answer: CachedAnswer, *, kind: str = "exact", similarity: float | None = None) -> None:
    """Fill a job (in memory) with a cached answer."""
    now = timezone.now()
    job.status = JobStatus.SUCCEEDED
    job.cached = kind
    job.cache_similarity = similarity
    job.output = answer.output
    job.finish_reason = answer.finish_reason
    job.input_tokens = answer.input_tokens
    job.output_tokens = answer.output_tokens
    job.usage_estimated = answer.usage_estimated
    job.response_model = answer.response_model
    job.cost_micros = 0
    job.started_at = job.finished_at = now


def _store(
    job: Job, *, principal: Principal, idempotency_key: str | None, fingerprint: str, spec: ModelSpec
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
    transaction.on_commit(functools.partial(_dispatch, job=job, spec=spec))
    return job, True


def _dispatch(*, job: Job, spec: ModelSpec) -> None:
    """A stored job's next step: a cached answer is published (ledger, events,
    webhook); a cacheable job leads its single flight (enqueued) or follows the
    identical job that leads it (completed when that one lands); any other job is
    enqueued."""
    schema = current_schema()
    if job.status == JobStatus.SUCCEEDED:
        _publish_cached(job=job, spec=spec, listeners=False)
        return
    plan = CachePlan.from_json(job.cache)
    # `refresh` asks for a new answer: it leads its own call, never follows another.
    if plan is not None and plan.key and plan.mode is CacheMode.USE:
        leader = flight_join(schema=schema, key=plan.key, job_id=job.pk)
        if leader is not None:
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


def _publish_cached(*, job: Job, spec: ModelSpec, listeners: bool) -> None:
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
        EventRelay(job_id=job.pk).final(*_answer_events(job))
    webhook_schedule(job_id=job.pk, webhook_url=job.webhook_url)


def _answer_events(job: Job) -> tuple[dict[str, Any], ...]:
    return (
        {"type": "delta", "text": job.output},
        {
            "type": "usage",
            "input_tokens": job.input_tokens,
            "output_tokens": job.output_tokens,
            "estimated": job.usage_estimated,
        },
        {"type": "done", "status": JobStatus.SUCCEEDED.value, "finish_reason": job.finish_reason},
    )


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


def _admissible_model(slug: str) -> ModelSpec:
    spec = model_get(slug)
    if spec is None or not spec.enabled:
        available = ", ".join(sorted(s.slug for s in models_enabled())) or "none"
        raise InvalidRequest(
            f"Model {slug!r} does not exist or is disabled. Available models: {available}.",
            code="model_not_found",
            param="model",
        )
    return spec


def _check_size(spec: ModelSpec, request: JobRequest) -> int:
    max_tokens = request.params.get("max_tokens")
    if max_tokens is not None and max_tokens > spec.max_output_tokens:
        raise InvalidRequest(
            f"max_tokens is {max_tokens}, above the {spec.max_output_tokens} output tokens {spec.slug} allows.",
            code="max_tokens_too_large",
            param="max_tokens",
        )
    # Images, audio and files count as nothing to tiktoken: held at a worst case
    # (and refused when the model cannot take them).
    input_tokens = count_message_tokens(request.messages, spec.encoding) + content_admit(
        spec=spec, messages=request.messages
    )
    needed = input_tokens + (max_tokens or 0)
    if needed > spec.context_window:
        raise PayloadTooLarge(
            f"The request needs {needed} tokens ({input_tokens} in the messages"
            f"{f' + {max_tokens} max_tokens' if max_tokens else ''}), above the {spec.context_window}-token"
            f" context window of {spec.slug}.",
            param="messages",
        )
    return input_tokens


def job_enqueue(*, job_id: uuid.UUID, model: str) -> None:
    """Send the job to its model's queue. The Celery task id is the job id, so a
    cancel can revoke it without storing anything else."""
    from tasks.jobs import job_run

    spec = model_get(model)
    timeout = spec.job_timeout if spec is not None else settings.JOB_DEADLINE_SECONDS
    # The job stops itself at its deadline; the task limits only catch what did not.
    limits = (
        {"soft_time_limit": timeout + settings.LLM_REQUEST_TIMEOUT_SECONDS + 30,
         "time_limit": timeout + settings.LLM_REQUEST_TIMEOUT_SECONDS + 60}
        if timeout > settings.JOB_DEADLINE_SECONDS
        else {}
    )  # fmt: skip
    job_run.apply_async(kwargs={"job_id": str(job_id), "model": model}, task_id=str(job_id), **limits)


# --- Cancel ---------------------------------------------------------------


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
            _reconcile_rate_limits(job=job, spec=spec, used=None)
        # Workers drop a revoked message unrun; one that races past the revoke
        # still finds the job cancelled and does nothing.
        from aiplatform.celery import app

        app.control.revoke(str(job.pk))
        job_flight_abandon(job=job)
    webhook_schedule(job_id=job.pk, webhook_url=job.webhook_url)  # last: the accounting above may not wait on it
    job.refresh_from_db()
    return job


# --- Execution (worker) ------------------------------------------------------


def job_claim(*, job_id: uuid.UUID) -> Job | None:
    """Atomically take a job for this worker, or None when it is not ours to run:
    already finished or cancelled, or held by a live claim (a duplicate message).
    A claim whose lease expired (its worker died) may be taken over.

    One `UPDATE ... RETURNING` (the ORM's update() returns only a count, and a
    second SELECT would cost a round trip on every job)."""
    now = timezone.now()
    lease = timedelta(seconds=settings.CELERY_TASK_TIME_LIMIT + 60)
    table = connection.ops.quote_name(Job._meta.db_table)
    claimed = list(
        Job.objects.raw(
            f"UPDATE {table} SET status = %s, started_at = %s, lease_expires_at = %s, attempts = attempts + 1"
            " WHERE id = %s AND attempts < %s AND (status = %s OR (status = %s AND lease_expires_at < %s))"
            " RETURNING *",
            [JobStatus.RUNNING, now, now + lease, job_id, MAX_CLAIMS, JobStatus.QUEUED, JobStatus.RUNNING, now],
        )
    )
    return claimed[0] if claimed else None


def job_execute(*, job_id: uuid.UUID) -> None:
    """Run a job end to end. Idempotent: a redelivered message for a job that is
    finished, cancelled or running elsewhere makes no provider call. Provider
    failures end the job as `failed`; anything else propagates to the caller (the
    task), which decides how to record it."""
    job = job_claim(job_id=job_id)
    if job is None:
        logger.info("job %s not claimable (finished, cancelled or running elsewhere); skipping", job_id)
        return
    bind(job_id=job.pk, model=job.model, user=job.user_id, tenant=current_schema())
    logger.info("job %s started (attempt %d)", job.pk, job.attempts)
    switch = switch_blocking(tenant_schema=current_schema(), user_id=job.user_id, model=job.model)
    if switch is not None:
        # Queued before the switch flipped: cancelled, never run.
        _job_cancel_switched(job=job, what=switch.what, reason=switch.reason)
        return
    spec = model_get(job.model)
    plan = CachePlan.from_json(job.cache)
    lookup: SemanticLookup | None = None
    if spec is not None and plan is not None and plan.lookup:
        answer, kind, similarity, lookup = _cache_lookup(job=job, plan=plan)
        if answer is not None:
            bind(cache=kind)
            _job_answer_from_cache(
                job=job, spec=spec, answer=answer, status=JobStatus.RUNNING, kind=kind, similarity=similarity
            )
            if plan.key:  # followers asked for the exact answer, not a paraphrase's
                _flight_land(job=job, plan=plan, answer=answer if kind == "exact" else None, spec=spec)
            return
    schema = current_schema()
    timeout = spec.job_timeout if spec is not None else settings.JOB_DEADLINE_SECONDS
    deadline = (job.started_at or timezone.now()) + timedelta(seconds=timeout)
    if timeout > settings.JOB_DEADLINE_SECONDS:  # a long model: the lease covers its deadline
        Job.objects.filter(pk=job.pk, status=JobStatus.RUNNING).update(
            lease_expires_at=deadline + timedelta(seconds=settings.LLM_REQUEST_TIMEOUT_SECONDS + 120)
        )
    # A cancel (job_cancel's flag) or the deadline stops the running call.
    watch = CallWatch(key=cancel_key(schema=schema, job_id=job.pk), deadline=deadline.timestamp())
    relay = EventRelay(job_id=job.pk, cancel_flag=watch.key)
    release_connection()  # the provider calls may take minutes; the pool should not wait
    try:
        with watching(watch):
            outcome = _run_chain(job=job, spec=spec, relay=relay, watch=watch, deadline=deadline)
    except CallStopped as stop:
        _job_stopped(job=job, stop=stop, relay=relay, plan=plan, fallback_spec=spec)
        return
    if isinstance(outcome, ProviderError):  # every step failed
        if spec is not None:
            _reconcile_rate_limits(job=job, spec=spec, used=0)
        job_fail(
            job_id=job.pk,
            error_type=outcome.error_type,
            message=_failure_summary(job, outcome),
            status=outcome.status,
            code=outcome.code,
            webhook_url=job.webhook_url,
            attempt_log=job.attempt_log,
        )
        if plan is not None and plan.key:
            _flight_land(job=job, plan=plan, answer=None)
        return
    if isinstance(outcome, _LastResort):  # every model failed; the semantic cache answered
        relay.flush()
        job.answered_by, job.tier = SEMANTIC_CACHE, outcome.tier
        _job_answer_from_cache(
            job=job,
            spec=spec or outcome.priced_as,
            answer=outcome.answer,
            status=JobStatus.RUNNING,
            kind="semantic",
            similarity=outcome.similarity,
        )
        if plan is not None and plan.key:
            _flight_land(job=job, plan=plan, answer=None)
        return
    answered, step, result = outcome
    cost = call_cost(answered, input_tokens=result.input_tokens, output_tokens=result.output_tokens)
    metrics.record_cost(current_schema(), answered.slug, cost)
    held_at = _hold_time(job)
    with transaction.atomic():
        succeeded = _job_succeed(
            job_id=job.pk,
            result=result,
            cost=cost,
            attempt_log=job.attempt_log,
            answered_by=answered.slug,
            tier=step + 1,
        )
        # Charged even when the job was cancelled while the provider answered: the
        # call was made. One charge per call (a unique constraint).
        ledger_record(
            kind=LedgerKind.CHARGE,
            user_id=job.user_id,
            job_id=job.pk,
            attempt=job.attempts,
            call=step,
            model=answered.slug,
            input_tokens=result.input_tokens,
            output_tokens=result.output_tokens,
            cost=cost,
            at=held_at,
        )
        if not succeeded:  # cancelled while the provider answered: the row shows what it cost
            Job.objects.filter(pk=job.pk, status=JobStatus.CANCELLED).update(
                cost_micros=cost, input_tokens=result.input_tokens, output_tokens=result.output_tokens
            )
    # Its own accounting first, before anything that may fail (listeners, webhook):
    # the charge is in the ledger, so the counters must get it (retried until they do).
    _settle(job_id=job.pk, cost=cost)
    _reconcile_rate_limits(job=job, spec=spec or answered, used=result.input_tokens + result.output_tokens)
    if succeeded:
        metrics.record_job_status(JobStatus.SUCCEEDED)
        logger.info(
            "job %s succeeded: %s answered (tier %d), %d+%d tokens, %d micro-USD",
            job.pk,
            answered.slug,
            step + 1,
            result.input_tokens,
            result.output_tokens,
            cost,
        )
        # Listeners first: the accounting below does not change the answer.
        relay.final(
            {
                "type": "usage",
                "input_tokens": result.input_tokens,
                "output_tokens": result.output_tokens,
                "estimated": result.usage_estimated,
            },
            {"type": "done", "status": JobStatus.SUCCEEDED.value, "finish_reason": result.finish_reason},
        )
        webhook_schedule(job_id=job.pk, webhook_url=job.webhook_url)
    # Then the cache and the identical requests that waited for this answer (only
    # the requested model's answers are cached: a fallback's is not what was asked).
    if succeeded and plan is not None and plan.write and step == 0:
        answer = CachedAnswer(
            output=result.output,
            finish_reason=result.finish_reason,
            input_tokens=result.input_tokens,
            output_tokens=result.output_tokens,
            usage_estimated=result.usage_estimated,
            response_model=result.response_model,
            created=timezone.now().isoformat(),
        )
        if plan.key:
            exact_put(
                schema=current_schema(),
                key=plan.key,
                answer=answer,
                ttl=plan.ttl,
                max_entries=policy_for(current_schema()).exact_max_entries,
            )
        if plan.semantic:
            _semantic_write(job=job, lookup=lookup, answer=answer)
        if plan.key:
            _flight_land(job=job, plan=plan, answer=answer, spec=answered)
    elif plan is not None and plan.key:
        _flight_land(job=job, plan=plan, answer=None)
    budget_after_charge(
        tenant_schema=current_schema(), user_id=job.user_id, tier=job.user.tier, email=job.user.email, at=held_at
    )


def _hold_time(job: Job) -> datetime:
    """When the job's budget hold was made: its charge is dated then (and so lands
    in the period whose counters the hold was settled into)."""
    if not job.reserved_micros:  # no budget applies: nothing was held, nothing to read
        return job.created_at or timezone.now()
    try:
        at = budget_hold_time(schema=current_schema(), job_id=job.pk)
    except redis.RedisError:
        at = None
    return at or job.created_at or timezone.now()


def _settle(*, job_id: uuid.UUID, cost: int) -> None:
    """Settle the job's hold at `cost`, retrying Redis errors for up to
    BUDGET_SETTLE_RETRY_SECONDS: the charge is already in the ledger, and a hold
    given back without it would hide the cost. Still failing: logged, and the
    budget sweep settles the job from its recorded cost (settling is exactly once
    and order-free, so a late settle still lands); the job's answer, events and
    webhook go on, so nothing fails it afterwards and releases the hold at 0."""
    schema = current_schema()
    give_up = time.monotonic() + settings.BUDGET_SETTLE_RETRY_SECONDS
    delay = 0.05
    while True:
        try:
            budget_settle(schema=schema, job_id=job_id, actual_micros=cost)
            return
        except redis.RedisError as exc:
            if time.monotonic() + delay > give_up:
                # The hold's record is still there (Redis never took the settle): the
                # budget sweep settles it from the job's recorded cost.
                logger.error("job %s: settlement of %d micro-USD failed; the sweep will settle it", job_id, cost)
                return
            logger.warning("job %s: settlement failed (%s); retrying in %.2fs", job_id, exc, delay)
            time.sleep(delay)
            delay = min(2 * delay, 2.0)


def _job_stopped(
    *, job: Job, stop: CallStopped, relay: EventRelay, plan: CachePlan | None, fallback_spec: ModelSpec | None
) -> None:
    """A call stopped by a cancel or by the job's deadline: charge what it used (its
    input once it was sent, the text it streamed), settle that into the budget
    whatever happened to the hold, give the rate-limit tokens back once; a timeout
    fails the job (once), a cancelled job stays cancelled (its stream already ended)."""
    step_spec = stop.spec or fallback_spec
    used_in = used_out = cost = 0
    held_at = _hold_time(job)
    if step_spec is not None and (stop.sent or stop.partial_output):
        used_in = job.input_tokens_estimate or 0
        used_out = count_text_tokens(stop.partial_output, step_spec.encoding)
        cost = call_cost(step_spec, input_tokens=used_in, output_tokens=used_out)
        ledger_record(
            kind=LedgerKind.CHARGE,
            user_id=job.user_id,
            job_id=job.pk,
            attempt=job.attempts,
            call=stop.step,
            model=step_spec.slug,
            input_tokens=used_in,
            output_tokens=used_out,
            cost=cost,
            note=f"stopped: {stop.reason} (counted)",
            at=held_at,
        )
    Job.objects.filter(pk=job.pk, status__in=[JobStatus.RUNNING, JobStatus.CANCELLED]).update(
        cost_micros=cost, input_tokens=used_in, output_tokens=used_out, usage_estimated=True
    )
    metrics.record_cost(current_schema(), step_spec.slug if step_spec else job.model, cost)
    _settle(job_id=job.pk, cost=cost)
    if step_spec is not None:
        _reconcile_rate_limits(job=job, spec=fallback_spec or step_spec, used=used_in + used_out)
    logger.info("job %s: call stopped (%s) after %d+%d tokens, %d micro-USD", job.pk, stop.reason, used_in,
                used_out, cost)  # fmt: skip
    if stop.reason == "timeout":
        relay.flush()
        job_fail(
            job_id=job.pk,
            error_type="timeout",
            message="The job passed its deadline; the call was stopped and charged for what it used.",
            webhook_url=job.webhook_url,
            attempt_log=job.attempt_log,
        )
    if plan is not None and plan.key:
        _flight_land(job=job, plan=plan, answer=None)
    budget_after_charge(
        tenant_schema=current_schema(), user_id=job.user_id, tier=job.user.tier, email=job.user.email, at=held_at
    )


@dataclass(frozen=True)
class _LastResort:
    answer: CachedAnswer
    similarity: float
    tier: int
    priced_as: ModelSpec  # what the saved cost is priced at when the requested model is gone


def _run_chain(
    *,
    job: Job,
    spec: ModelSpec | None,
    relay: EventRelay,
    watch: CallWatch | None = None,
    deadline: datetime | None = None,
) -> tuple[ModelSpec, int, ChatResult] | _LastResort | ProviderError:
    """Try the requested model, then each fallback, then (if it is last) the
    semantic cache; the first answer wins: (model, step, result). Each model gets
    its retries and is skipped while its breaker is open; a stream that broke
    mid-answer is charged (and refunded) and the next step starts over, after a
    `fallback` event that tells listeners to discard what they showed. No step
    starts after the job's deadline. Every step failed: the last error.

    The job stays in this worker for every step: it holds a worker slot already,
    the calls are I/O in a gevent pool, and no model queue has a concurrency cap of
    its own to respect; re-queueing would add a queue wait to a job that is late.
    A call stopped by `watch` (cancel, deadline) ends the chain: CallStopped."""
    if deadline is None:
        deadline = (job.started_at or timezone.now()) + timedelta(seconds=settings.JOB_DEADLINE_SECONDS)
    failure: ProviderError | None = None
    previous = ""
    plan = CachePlan.from_json(job.cache)
    for step, name in enumerate([job.model, *job.fallbacks]):
        if name == SEMANTIC_CACHE:  # a local lookup: worth it even past the deadline
            if plan is not None and plan.mode in (CacheMode.BYPASS, CacheMode.REFRESH):
                continue  # the request asked for no cached answer
            if failure is not None:
                relay.event({"type": "fallback", "from": previous, "to": name, "reason": failure.error_type})
                metrics.record_fallback(previous, name, failure.error_type)
            found = _semantic_last_resort(job=job, spec=spec, tier=step + 1)
            if found is not None:
                return found
            continue
        if step and timezone.now() >= deadline:
            continue  # no model call starts after the deadline (a later semantic step still may)
        step_spec = model_get(name)
        switch = switch_blocking(tenant_schema=current_schema(), user_id=job.user_id, model=name) if step else None
        if step_spec is None or not step_spec.enabled or switch is not None:
            why = f"switched off: {switch.reason}" if switch is not None else "disabled or no longer in the catalog"
            failure = ProviderError("model_unavailable", f"Model {name!r} is {why}.")
            job.attempt_log.append(_attempt(name, timezone.now(), "skipped", 0, failure))
            previous = name
            continue
        if failure is not None:
            relay.event({"type": "fallback", "from": previous, "to": name, "reason": failure.error_type})
            metrics.record_fallback(previous, name, failure.error_type)
        previous = name
        try:
            return (
                step_spec,
                step,
                _call_with_retries(job=job, spec=step_spec, relay=relay, tier=step + 1, watch=watch, deadline=deadline),
            )
        except CallStopped as stop:
            stop.spec, stop.step = step_spec, step
            raise
        except ProviderError as exc:
            if exc.partial_output:
                _charge_and_refund(job=job, spec=step_spec, output=exc.partial_output, call=step)
            failure = exc
    return failure or ProviderError("deadline_exceeded", "The job's deadline passed before any model answered.")


def _semantic_last_resort(*, job: Job, spec: ModelSpec | None, tier: int) -> _LastResort | None:
    """The closest answer in the tenant's semantic cache at or above its threshold."""
    started = timezone.now()
    policy = policy_for(current_schema())
    priced_as = spec or model_get(job.model)
    found = None
    if policy.embedder is not None and priced_as is not None:
        try:
            lookup = semantic_lookup(
                policy=policy,
                embedder=policy.embedder,
                model=job.model,
                messages=job.messages,
                params=job.params,
                user_id=job.user_id,
            )
        except (EmbedderError, DatabaseError) as exc:
            logger.warning("semantic cache (last tier) failed for job %s: %s", job.pk, exc)
            lookup = None
        if lookup is not None and lookup.hit is not None:
            found = _LastResort(lookup.hit.answer, lookup.hit.similarity, tier, priced_as)
    miss = None if found else ProviderError("cache_miss", "No cached answer was close enough.")
    job.attempt_log.append(_attempt(SEMANTIC_CACHE, started, "succeeded" if found else "failed", 0, miss))
    return found


def _failure_summary(job: Job, last: ProviderError) -> str:
    """The last error's message, and what every step did."""
    steps = [
        f"{a['model']}: {a['outcome']} ({a['error_type']})" for a in job.attempt_log if a["outcome"] != "succeeded"
    ]
    if len(steps) <= 1:
        return last.message
    return f"{last.message} Every step failed: {'; '.join(steps)}."


def _charge_and_refund(*, job: Job, spec: ModelSpec, output: str, call: int = 0) -> None:
    """A call that failed after the provider generated text: the provider bills
    those tokens, so the ledger shows the charge, and the refund that gives it
    back (the user got no answer). Both unique per attempt; the hold is released."""
    input_tokens, output_tokens = job.input_tokens_estimate, count_text_tokens(output, spec.encoding)
    cost = call_cost(spec, input_tokens=input_tokens, output_tokens=output_tokens)
    common: dict[str, Any] = {
        "user_id": job.user_id,
        "job_id": job.pk,
        "attempt": job.attempts,
        "call": call,
        "model": spec.slug,
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
    }
    with transaction.atomic():
        ledger_record(kind=LedgerKind.CHARGE, cost=cost, note="partial stream (counted)", **common)
        ledger_record(kind=LedgerKind.REFUND, cost=-cost, note="the call failed: no answer", **common)


_ANSWER_FIELDS = (
    "status",
    "cached",
    "cache_similarity",
    "output",
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


def _call_with_retries(
    *,
    job: Job,
    spec: ModelSpec,
    relay: EventRelay,
    tier: int = 1,
    watch: CallWatch | None = None,
    deadline: datetime | None = None,
) -> ChatResult:
    """Call the model, retrying what failed for the provider's reasons (5xx, 429,
    timeouts, no connection) with exponential backoff and full jitter, or after the
    provider's Retry-After when that is longer; never after the job's deadline, and
    never once text has streamed (the listeners have it: a retry would repeat it).
    A model whose circuit breaker is open is skipped without a call. The attempt,
    with its retries, is appended to `job.attempt_log`."""
    if deadline is None:
        deadline = (job.started_at or timezone.now()) + timedelta(seconds=settings.JOB_DEADLINE_SECONDS)
    started = timezone.now()
    retries = 0
    # Our span attributes, worked out once for every attempt, and only when traced.
    span_fields = _span_fields(job, tier) if tracing_enabled() else None
    while True:
        if not breaker_allow(spec.slug):
            exc = ProviderError(
                "circuit_open",
                f"{spec.slug} is failing; its circuit breaker is open, so it was skipped without a call.",
            )
            job.attempt_log.append(_attempt(spec.slug, started, "skipped", retries, exc))
            raise exc
        try:
            with provider_call(
                spec,
                operation="chat",
                params=job.params,
                stream=True,
                job=span_fields,
                messages=job.messages,
            ) as call:
                result = chat_stream(spec, messages=job.messages, params=job.params, on_delta=relay.delta, watch=watch)
                call.succeeded(
                    result,
                    cost_micros=call_cost(spec, input_tokens=result.input_tokens, output_tokens=result.output_tokens),
                )
        except CallStopped as stop:  # cancelled, or the job's deadline: no retry, no fallback
            stopped = ProviderError(stop.reason, str(stop))
            job.attempt_log.append(_attempt(spec.slug, started, "stopped", retries, stopped))
            raise
        except ProviderError as exc:
            breaker_record(spec.slug, ok=not exc.provider_trouble, status=exc.status)
            wait = _backoff(retries, exc.retry_after)
            retry = exc.provider_trouble and not exc.partial_output and retries < settings.LLM_MAX_RETRIES
            if not retry or timezone.now() + timedelta(seconds=wait) >= deadline:
                job.attempt_log.append(_attempt(spec.slug, started, "failed", retries, exc))
                raise
            logger.info(
                "job %s: %s failed (%s); retry %d in %.2fs", job.pk, spec.slug, exc.error_type, retries + 1, wait
            )
            time.sleep(wait)
            retries += 1
            continue
        breaker_record(spec.slug, ok=True)
        job.attempt_log.append(_attempt(spec.slug, started, "succeeded", retries, None))
        return result


def _span_fields(job: Job, tier: int) -> dict[str, Any]:
    """Our attributes on a provider call's span: whose job, and why it called."""
    plan = CachePlan.from_json(job.cache)
    if plan is None:
        cache = "off"
    elif plan.mode in (CacheMode.BYPASS, CacheMode.REFRESH):
        cache = plan.mode.value
    else:
        cache = "miss" if plan.lookup else "write"
    return {
        "tenant": current_schema(),
        "user": job.user_id,
        "job_id": str(job.pk),
        "cache": cache,
        "fallback_tier": tier,
    }


def _backoff(retries: int, retry_after: float | None) -> float:
    """Full jitter on an exponential ceiling; at least the provider's Retry-After."""
    ceiling = min(settings.LLM_RETRY_MAX_SECONDS, settings.LLM_RETRY_BASE_SECONDS * 2**retries)
    wait = random.uniform(0, ceiling)
    return max(wait, retry_after) if retry_after is not None else wait


def _attempt(model: str, started: Any, outcome: str, retries: int, exc: ProviderError | None) -> dict[str, Any]:
    return {
        "model": model,
        "started_at": started.isoformat(),
        "ended_at": timezone.now().isoformat(),
        "outcome": outcome,
        "error_type": exc.error_type if exc else None,
        "provider_status": exc.status if exc else None,
        "message": exc.message if exc else None,
        "retries": retries,
    }


def _cache_lookup(*, job: Job, plan: CachePlan) -> tuple[CachedAnswer | None, str, float | None, SemanticLookup | None]:
    """The worker's look before calling the model: the exact entry (written while
    the job waited), then the semantic cache. (answer, kind, similarity, the
    semantic lookup to reuse its embedding). Cache trouble is logged, never fatal."""
    schema = current_schema()
    if plan.key:
        answer = exact_get(schema=schema, key=plan.key, count=False)  # its miss was counted at submission
        if answer is not None:
            cache_count(schema=schema, field="exact_hit")
            metrics.record_cache_request("exact", hit=True)
            return answer, "exact", None, None
    if not plan.semantic:
        return None, "", None, None
    policy = policy_for(schema)
    if policy.embedder is None:
        return None, "", None, None
    try:
        lookup = semantic_lookup(
            policy=policy,
            embedder=policy.embedder,
            model=job.model,
            messages=job.messages,
            params=job.params,
            user_id=job.user_id,
        )
    except (EmbedderError, DatabaseError) as exc:
        logger.warning("semantic cache lookup failed for job %s, calling the model: %s", job.pk, exc)
        return None, "", None, None
    if lookup is None:
        return None, "", None, None
    cache_count(schema=schema, field="semantic_hit" if lookup.hit else "semantic_miss", lookup_ms=lookup.elapsed_ms)
    metrics.record_cache_request("semantic", hit=lookup.hit is not None)
    logger.info(
        "semantic cache %s for job %s (similarity %s, %.1f ms)",
        "hit" if lookup.hit else "miss",
        job.pk,
        None if lookup.similarity is None else round(lookup.similarity, 4),
        lookup.elapsed_ms,
    )
    if lookup.hit is not None:
        return lookup.hit.answer, "semantic", lookup.hit.similarity, lookup
    return None, "", None, lookup


def _semantic_write(*, job: Job, lookup: SemanticLookup | None, answer: CachedAnswer) -> None:
    """Keep a model's answer for paraphrases (reusing the lookup's embedding)."""
    policy = policy_for(current_schema())
    if policy.embedder is None:
        return
    try:
        if lookup is None:  # `refresh`: nothing was looked up
            key = semantic_key(
                model=job.model,
                messages=job.messages,
                params=job.params,
                embedder=policy.embedder.name,
                owner=policy.owner(job.user_id),
            )
            if key is None:
                return
            vector = policy.embedder.embed([key.prompt])[0]
        else:
            key, vector = lookup.key, lookup.vector
        semantic_store(policy=policy, key=key, vector=vector, answer=answer)
    except PromptTooLong:
        return
    except (EmbedderError, DatabaseError) as exc:
        logger.warning("semantic cache write skipped for job %s: %s", job.pk, exc)


def _job_answer_from_cache(
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
    _answer_from_cache(job, answer, kind=kind, similarity=similarity)
    updated = Job.objects.filter(pk=job.pk, status=status).update(
        lease_expires_at=None, **{name: getattr(job, name) for name in _ANSWER_FIELDS}
    )
    if not updated:
        if status == JobStatus.RUNNING:  # cancelled while it ran: nobody else settles it
            budget_release(schema=current_schema(), job_id=job.pk)
            _reconcile_rate_limits(job=job, spec=spec, used=None)
        return False
    budget_release(schema=current_schema(), job_id=job.pk)
    _reconcile_rate_limits(job=job, spec=spec, used=None)
    metrics.record_job_status(JobStatus.SUCCEEDED)
    _publish_cached(job=job, spec=spec, listeners=True)
    return True


def _flight_land(*, job: Job, plan: CachePlan, answer: CachedAnswer | None, spec: ModelSpec | None = None) -> None:
    """End the single flight this job led: its followers get its answer (the
    requested model's own, or an exact cache entry: what they asked for), or,
    when it has none (it failed, was cancelled, answered otherwise), are enqueued
    to run on their own."""
    followers = flight_land(schema=current_schema(), key=plan.key, job_id=job.pk)
    for follower_id in followers:
        follower = Job.objects.select_related("user").filter(pk=follower_id).first()
        if follower is None:
            continue
        if answer is None or spec is None:
            job_enqueue(job_id=follower.pk, model=follower.model)
        elif _job_answer_from_cache(job=follower, spec=spec, answer=answer, status=JobStatus.QUEUED):
            cache_count(schema=current_schema(), field="flight_follower")
            logger.info("job %s answered by job %s (single flight)", follower.pk, job.pk)


def job_fail_unexpectedly(*, job_id: uuid.UUID, error_type: str, message: str) -> None:
    """The task's last resort (a time limit, a bug): fail the job and release the
    identical requests that waited for it."""
    job_fail(job_id=job_id, error_type=error_type, message=message)
    job = Job.objects.filter(pk=job_id).first()
    if job is not None:
        job_flight_abandon(job=job)


def job_flight_abandon(*, job: Job) -> None:
    """A job that ends without an answer of its own (cancelled, switched off,
    failed by its task) releases the identical requests that waited for it."""
    plan = CachePlan.from_json(job.cache)
    if plan is not None and plan.key:
        _flight_land(job=job, plan=plan, answer=None)


def _job_cancel_switched(*, job: Job, what: str, reason: str) -> None:
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
        _reconcile_rate_limits(job=job, spec=spec, used=None)
    if cancelled:
        metrics.record_job_status(JobStatus.CANCELLED)
        logger.info("job %s cancelled in the worker: AI is switched off for %s", job.pk, what)
        job_events_close(job_id=job.pk, status=JobStatus.CANCELLED.value)
        webhook_schedule(job_id=job.pk, webhook_url=job.webhook_url)
    job_flight_abandon(job=job)


def _job_succeed(
    *,
    job_id: uuid.UUID,
    result: ChatResult,
    cost: int,
    attempt_log: list[dict[str, Any]],
    answered_by: str,
    tier: int,
) -> bool:
    # Guarded by status: a job cancelled while the provider answered stays cancelled.
    return bool(
        Job.objects.filter(pk=job_id, status=JobStatus.RUNNING).update(
            attempt_log=attempt_log,
            answered_by=answered_by,
            tier=tier,
            status=JobStatus.SUCCEEDED,
            output=result.output,
            finish_reason=result.finish_reason,
            input_tokens=result.input_tokens,
            output_tokens=result.output_tokens,
            usage_estimated=result.usage_estimated,
            provider_latency_ms=result.latency_ms,
            response_model=result.response_model,
            response_id=result.response_id,
            cost_micros=cost,
            finished_at=timezone.now(),
            lease_expires_at=None,
        )
    )


def job_fail(
    *,
    job_id: uuid.UUID,
    error_type: str,
    message: str,
    status: int | None = None,
    code: str | None = None,
    webhook_url: str | None = None,
    attempt_log: list[dict[str, Any]] | None = None,
) -> None:
    """Fail a running job: record the error (and the attempts made), tell
    listeners, send its webhook (`webhook_url` saves a query when the caller has
    the job at hand)."""
    extra: dict[str, Any] = {"attempt_log": attempt_log} if attempt_log is not None else {}
    failed = Job.objects.filter(pk=job_id, status=JobStatus.RUNNING).update(
        **extra,
        status=JobStatus.FAILED,
        error_type=error_type,
        error_code=code or "",
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
            {"type": "error", "error_type": error_type, "message": message, "provider_status": status}
        )
        if webhook_url is None:
            webhook_url = Job.objects.filter(pk=job_id).values_list("webhook_url", flat=True).first() or ""
        webhook_schedule(job_id=job_id, webhook_url=webhook_url)


# --- Sweep (beat, once a minute per tenant) -----------------------------------


@dataclass(frozen=True)
class SweepResult:
    requeued: int
    failed: int


def jobs_requeue_stale() -> SweepResult:
    """Repair what a lost broker message or a dead worker left behind, in the
    current tenant schema: re-send jobs queued for longer than
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
