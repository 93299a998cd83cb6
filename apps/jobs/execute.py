"""Running a job (in a worker): claim it, look in the cache, run the call chain
(apps.llm.chain) with the job as its host, then settle (settlement.py) and
publish the answer, the cache entries and the single flight's followers."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import connection
from django.utils import timezone

from apps.billing.services import call_cost
from apps.cache.exact import CachedAnswer, exact_put
from apps.cache.policy import CacheMode, CachePlan, policy_for, semantic_allowed
from apps.cache.semantic import SemanticLookup
from apps.catalog.selectors import ModelSpec, model_get
from apps.controls.switches import switch_blocking
from apps.llm.capabilities import missing
from apps.llm.chain import SEMANTIC_CACHE, Answered, ChainCall, LastResort, chain_run, failure_summary
from apps.llm.providers import CallStopped, CallWatch, ChatResult, ProviderError
from apps.observability import metrics
from apps.observability.context import bind
from apps.observability.tracing import tracing_enabled
from apps.tenants.db import current_schema, release_connection

from .cache_steps import cache_lookup, semantic_lookup_for, semantic_write
from .events import EventRelay, answered_events
from .heartbeat import beating, draining, job_hand_back, job_resend, lease_expiry, lease_index
from .lifecycle import job_answer_from_cache, job_cancel_switched, job_fail, job_flight_land
from .models import Job, JobStatus
from .restarts import job_restart
from .settlement import (
    job_after_charge,
    job_answer_charge,
    job_hold_settle,
    job_hold_time,
    job_partial_charge,
    job_stop_charge,
    job_tokens_settle,
    lost_cost,
    lost_tokens,
)
from .stops import cancel_key, watching
from .webhooks import webhook_schedule

logger = logging.getLogger(__name__)

# A job whose worker keeps dying (poison input, OOM) is failed after this many claims.
MAX_CLAIMS = 3


def job_claim(*, job_id: uuid.UUID) -> Job | None:
    """Atomically take a job for this worker, or None when it is not ours to run:
    already finished or cancelled, or held by a live claim (a duplicate message).
    A claim whose lease expired (its worker died) may be taken over. The lease is
    short (JOB_LEASE_SECONDS) and renewed by the worker's heartbeat (heartbeat.py).

    One `UPDATE ... RETURNING` (the ORM's update() returns only a count, and a
    second SELECT would cost a round trip on every job); it also returns the
    lease it replaced (`prior_lease`: when a lost attempt was last renewed)."""
    now = timezone.now()
    table = connection.ops.quote_name(Job._meta.db_table)
    claimed = list(
        Job.objects.raw(
            f"UPDATE {table} AS j SET status = %s, started_at = %s, lease_expires_at = %s, attempts = j.attempts + 1"
            f" FROM (SELECT id, lease_expires_at AS prior_lease FROM {table} WHERE id = %s FOR UPDATE) AS prior"
            " WHERE j.id = prior.id AND j.attempts < %s"
            " AND (j.status = %s OR (j.status = %s AND j.lease_expires_at < %s))"
            " RETURNING j.*, prior.prior_lease",
            [JobStatus.RUNNING, now, lease_expiry(now), job_id, MAX_CLAIMS, JobStatus.QUEUED, JobStatus.RUNNING, now],
        )
    )
    return claimed[0] if claimed else None


@dataclass
class JobHost:
    """The job as the call chain's host (apps.llm.chain.ChainHost): its relay
    gets the deltas and events, its ledger the partial streams, its tenant's
    semantic cache is the last resort."""

    job: Job
    spec: ModelSpec | None  # the requested model (None: gone from the catalog)
    relay: EventRelay

    def available(self, step: int, name: str) -> ModelSpec | ProviderError:
        spec = model_get(name)
        # The requested model's switches were checked when the job was claimed.
        switch = switch_blocking(tenant_schema=current_schema(), user_id=self.job.user_id, model=name) if step else None
        if spec is None or not spec.enabled or switch is not None:
            why = f"switched off: {switch.reason}" if switch is not None else "disabled or no longer in the catalog"
            return ProviderError("model_unavailable", f"Model {name!r} is {why}.")
        # The requested model was checked at admission.
        lacking = missing(spec, self.job.params, self.job.messages) if step else None
        if lacking is not None:
            return ProviderError("model_unavailable", f"Skipped: {lacking[1]}")
        return spec

    def delta(self, text: str) -> None:
        self.relay.delta(text)

    def part(self, part: dict[str, Any]) -> None:
        self.relay.part(part)

    def event(self, event: dict[str, Any]) -> None:
        self.relay.event(event)

    def partial(self, *, spec: ModelSpec, output: str, step: int) -> None:
        job_partial_charge(job=self.job, spec=spec, output=output, call=step)

    def last_resort(self, *, tier: int) -> LastResort | None:
        """The closest answer in the tenant's semantic cache at or above its threshold."""
        job = self.job
        policy = policy_for(current_schema())
        priced_as = self.spec or model_get(job.model)
        if priced_as is None:
            return None
        lookup = semantic_lookup_for(job, policy, when="as the last tier")
        if lookup is None or lookup.hit is None:
            return None
        return LastResort(lookup.hit.answer, lookup.hit.similarity, tier, priced_as)

    def price(self, spec: ModelSpec, result: ChatResult) -> int:
        return call_cost(
            spec,
            input_tokens=result.input_tokens,
            output_tokens=result.output_tokens,
            cached_tokens=result.cached_tokens,
            tier=result.service_tier or self.job.params.get("service_tier"),
        )

    def span_fields(self, tier: int) -> dict[str, Any] | None:
        """Our attributes on a provider call's span: whose job, and why it called."""
        if not tracing_enabled():
            return None
        plan = CachePlan.from_json(self.job.cache)
        if plan is None:
            cache = "off"
        elif plan.mode in (CacheMode.BYPASS, CacheMode.REFRESH):
            cache = plan.mode.value
        else:
            cache = "miss" if plan.lookup else "write"
        return {
            "tenant": current_schema(),
            "user": self.job.user_id,
            "job_id": str(self.job.pk),
            "cache": cache,
            "fallback_tier": tier,
        }


def job_execute(*, job_id: uuid.UUID) -> None:
    """Run a job end to end. Idempotent: a redelivered message for a job that is
    finished, cancelled or running elsewhere makes no provider call. Provider
    failures end the job as `failed`; anything else propagates to the caller (the
    task), which decides how to record it. While it runs, the worker's heartbeat
    renews its lease; an attempt that starts a lost one over says so first."""
    schema = current_schema()
    if draining():  # this worker is shutting down: the job goes to another, unclaimed
        job_resend(job_id=job_id)
        return
    lease_index(schema=schema, job_id=job_id, until=lease_expiry())  # before the claim: no window unwatched
    job = job_claim(job_id=job_id)
    if job is None:
        logger.info("job %s not claimable (finished, cancelled or running elsewhere); skipping", job_id)
        return
    bind(job_id=job.pk, model=job.model, user=job.user_id, tenant=schema)
    logger.info("job %s started (attempt %d)", job.pk, job.attempts)
    spec = model_get(job.model)
    timeout = spec.job_timeout if spec is not None else settings.JOB_DEADLINE_SECONDS
    deadline = (job.started_at or timezone.now()) + timedelta(seconds=timeout)
    # A cancel (job_cancel's flag), the deadline, a takeover or a shutdown stops the running call.
    watch = CallWatch(key=cancel_key(schema=schema, job_id=job.pk), deadline=deadline.timestamp())
    relay = EventRelay(job_id=job.pk, cancel_flag=watch.key, attempt=job.attempts)
    with beating(schema=schema, job=job, watch=watch):
        if job.attempts > 1 and not job_restart(job=job, relay=relay, prior_lease=getattr(job, "prior_lease", None)):
            return
        _job_run(job=job, spec=spec, watch=watch, relay=relay, deadline=deadline)


def _job_run(*, job: Job, spec: ModelSpec | None, watch: CallWatch, relay: EventRelay, deadline: datetime) -> None:
    switch = switch_blocking(tenant_schema=current_schema(), user_id=job.user_id, model=job.model)
    if switch is not None:
        # Queued before the switch flipped: cancelled, never run.
        _settle_lost(job)
        job_cancel_switched(job=job, what=switch.what, reason=switch.reason)
        return
    plan = CachePlan.from_json(job.cache)
    lookup: SemanticLookup | None = None
    if spec is not None and plan is not None and plan.lookup:
        answer, kind, similarity, lookup = cache_lookup(job=job, plan=plan)
        if answer is not None:
            bind(cache=kind)
            _settle_lost(job)
            job_answer_from_cache(
                job=job, spec=spec, answer=answer, status=JobStatus.RUNNING, kind=kind, similarity=similarity
            )
            if plan.key:  # followers asked for the exact answer, not a paraphrase's
                job_flight_land(job=job, plan=plan, answer=answer if kind == "exact" else None, spec=spec)
            return
    call = ChainCall(
        steps=[job.model, *job.fallbacks],
        messages=job.messages,
        params=job.params,
        deadline=deadline,
        watch=watch,
        cached_allowed=(plan is None or plan.mode not in (CacheMode.BYPASS, CacheMode.REFRESH))
        and semantic_allowed(job.params),
        label=str(job.pk),
        attempt_log=job.attempt_log,
    )
    release_connection()  # the provider calls may take minutes; the pool should not wait
    try:
        with watching(watch):
            outcome = chain_run(call, JobHost(job=job, spec=spec, relay=relay))
    except CallStopped as stop:
        _job_stopped(job=job, stop=stop, relay=relay, plan=plan, requested=spec)
        return
    if isinstance(outcome, ProviderError):  # every step failed
        if spec is not None:
            job_tokens_settle(job=job, spec=spec, used=lost_tokens(job))
        _settle_lost(job)
        job_fail(
            job_id=job.pk,
            error_type=outcome.error_type,
            message=failure_summary(job.attempt_log, outcome),
            status=outcome.status,
            code=outcome.code,
            param=outcome.param,
            retry_after=outcome.retry_after,
            webhook_url=job.webhook_url,
            attempt_log=job.attempt_log,
            attempt=job.attempts,
        )
        if plan is not None and plan.key:
            job_flight_land(job=job, plan=plan, answer=None)
        return
    if isinstance(outcome, LastResort):  # every model failed; the semantic cache answered
        relay.flush()
        job.answered_by, job.tier = SEMANTIC_CACHE, outcome.tier
        _settle_lost(job)
        job_answer_from_cache(
            job=job,
            spec=spec or outcome.priced_as,
            answer=outcome.answer,
            status=JobStatus.RUNNING,
            kind="semantic",
            similarity=outcome.similarity,
        )
        if plan is not None and plan.key:
            job_flight_land(job=job, plan=plan, answer=None)
        return
    _job_answered(job=job, outcome=outcome, relay=relay, plan=plan, lookup=lookup, requested=spec)


def _settle_lost(job: Job) -> None:
    """Before a path that gives the hold back: what lost attempts were charged
    goes into `spent` (a release after this settle changes nothing)."""
    cost = lost_cost(job)
    if cost:
        job_hold_settle(job_id=job.pk, cost=cost)


def _job_answered(
    *,
    job: Job,
    outcome: Answered,
    relay: EventRelay,
    plan: CachePlan | None,
    lookup: SemanticLookup | None,
    requested: ModelSpec | None,
) -> None:
    """A model answered: charge and settle, tell the listeners, then the caches and
    the identical requests that waited for this answer."""
    answered, step, result = outcome.spec, outcome.step, outcome.result
    held_at = job_hold_time(job)
    succeeded, cost = job_answer_charge(
        job=job, spec=answered, step=step, result=result, requested=requested, held_at=held_at
    )
    if succeeded:
        metrics.record_job_status(JobStatus.SUCCEEDED)
        # Listeners first: the accounting below does not change the answer.
        relay.final(*answered_events(result, cost=cost, model=answered.slug))
        webhook_schedule(job_id=job.pk, webhook_url=job.webhook_url)
    # Only the requested model's answers are cached: a fallback's is not what was asked.
    if succeeded and plan is not None and plan.write and step == 0:
        answer = CachedAnswer(
            output=result.output,
            finish_reason=result.finish_reason,
            input_tokens=result.input_tokens,
            output_tokens=result.output_tokens,
            usage_estimated=result.usage_estimated,
            response_model=result.response_model,
            created=timezone.now().isoformat(),
            tool_calls=result.tool_calls,
            refusal=result.refusal,
            logprobs=result.logprobs,
            choices=result.choices,
            system_fingerprint=result.system_fingerprint,
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
            semantic_write(job=job, lookup=lookup, answer=answer)
        if plan.key:
            job_flight_land(job=job, plan=plan, answer=answer, spec=answered)
    elif plan is not None and plan.key:
        job_flight_land(job=job, plan=plan, answer=None)
    job_after_charge(job=job, at=held_at)


def _job_stopped(
    *, job: Job, stop: CallStopped, relay: EventRelay, plan: CachePlan | None, requested: ModelSpec | None
) -> None:
    """A call stopped by a cancel or by the job's deadline: charged for what it
    used (settlement); a timeout fails the job (once), a cancelled job stays
    cancelled (its stream already ended)."""
    if stop.reason == "handback":  # shutting down: another worker starts it over now
        relay.flush()
        job_hand_back(job=job)
        return
    if stop.reason == "superseded":  # taken over: the new attempt charges this one's call
        return
    held_at = job_hold_time(job)
    job_stop_charge(job=job, stop=stop, requested=requested, held_at=held_at)
    if stop.reason == "timeout":
        relay.flush()
        job_fail(
            job_id=job.pk,
            error_type="timeout",
            message="The job passed its deadline; the call was stopped and charged for what it used.",
            webhook_url=job.webhook_url,
            attempt_log=job.attempt_log,
            attempt=job.attempts,
        )
    if plan is not None and plan.key:
        job_flight_land(job=job, plan=plan, answer=None)
    job_after_charge(job=job, at=held_at)
