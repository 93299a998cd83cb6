"""Settlement: what a job's end does to money and limits. The ledger gets one
charge per call (exactly once: a unique constraint), the budget hold is settled
at that cost (exactly once and order-free: a Redis marker), the rate-limit
tokens taken at admission are reconciled with what was used (exactly once: a
Redis marker), and budget alerts and switches follow the charge.

Plain functions of the job row: a worker calls them, and so can any process
(the web process's lane, a sweep) with no Celery task around them.
"""

from __future__ import annotations

import logging
import time
import uuid
from datetime import datetime
from typing import Any

import redis
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from apps.billing.budgets import SETTLED_TTL_SECONDS, budget_after_charge, budget_hold_time, budget_settle
from apps.billing.models import LedgerKind
from apps.billing.services import call_cost, ledger_record
from apps.catalog.selectors import ModelSpec
from apps.core.redis import redis_client
from apps.llm.providers import CallStopped, ChatResult
from apps.llm.tokens import count_text_tokens
from apps.observability import metrics
from apps.ratelimit.limits import buckets_for, ratelimit_reconcile, ratelimit_refund
from apps.tenants.db import current_schema

from .models import Job, JobStatus

logger = logging.getLogger(__name__)


def job_tokens_settle(*, job: Job, spec: ModelSpec, used: int | None) -> None:
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


def lost_attempts(job: Job) -> list[dict[str, Any]]:
    """The attempts whose worker was lost mid-call, as charged (restarts.py)."""
    return [entry for entry in job.attempt_log or () if entry.get("outcome") == "lost"]


def lost_cost(job: Job) -> int:
    """What the job's lost attempts were charged: part of the job's cost."""
    return sum(int(entry.get("cost_micros") or 0) for entry in lost_attempts(job))


def lost_tokens(job: Job) -> int:
    return sum(int(e.get("input_tokens") or 0) + int(e.get("output_tokens") or 0) for e in lost_attempts(job))


def job_hold_time(job: Job) -> datetime:
    """When the job's budget hold was made: its charge is dated then (and so lands
    in the period whose counters the hold was settled into)."""
    if not job.reserved_micros:  # no budget applies: nothing was held, nothing to read
        return job.created_at or timezone.now()
    try:
        at = budget_hold_time(schema=current_schema(), job_id=job.pk)
    except redis.RedisError:
        at = None
    return at or job.created_at or timezone.now()


def job_hold_settle(*, job_id: uuid.UUID, cost: int) -> None:
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


def job_served_tier(job: Job, spec: ModelSpec, *, reported: str = "") -> str | None:
    """The service tier a call is priced at: the one the provider reported (OpenAI
    names it in every chunk), else the one the request asked for (a provider that
    says nothing, or a call stopped or broken before we kept what it said). No
    cap: the ledger is the provider's bill; the hold was the worst case
    (billing.services.hold_multiple). A reported tier the catalog does not price
    is charged at 1, and the operator hears of it."""
    if reported and reported not in ("auto", "default") and reported not in dict(spec.service_tiers):
        logger.warning(
            "job %s: %s reported service tier %r, which its catalog entry does not price: charged at 1x",
            job.pk,
            spec.slug,
            reported,
        )
    return reported or job.params.get("service_tier")


def job_answer_charge(
    *, job: Job, spec: ModelSpec, step: int, result: ChatResult, requested: ModelSpec | None, held_at: datetime
) -> tuple[bool, int]:
    """A model answered: the job succeeds (unless it was cancelled meanwhile) and
    the call is charged (dated `held_at`, see job_hold_time), in one transaction,
    then the hold is settled and the tokens reconciled. (Whether the job
    succeeded, its cost in micro-dollars: every attempt's, a lost one's too.)

    Fenced by the attempt: a worker whose job was taken over (it stalled past its
    lease) writes only its ledger entry, which the provider's bill has; the job,
    its hold and its tokens belong to the attempt that runs it now."""
    cost = call_cost(
        spec,
        input_tokens=result.input_tokens,
        output_tokens=result.output_tokens,
        cached_tokens=result.cached_tokens,
        tier=job_served_tier(job, spec, reported=result.service_tier),
    )
    metrics.record_cost(current_schema(), spec.slug, cost)
    total = cost + lost_cost(job)
    with transaction.atomic():
        # Guarded by status: a job cancelled while the provider answered stays cancelled.
        succeeded = bool(
            Job.objects.filter(pk=job.pk, status=JobStatus.RUNNING, attempts=job.attempts).update(
                attempt_log=job.attempt_log,
                answered_by=spec.slug,
                tier=step + 1,
                status=JobStatus.SUCCEEDED,
                output=result.output,
                tool_calls=result.tool_calls,
                finish_reason=result.finish_reason,
                input_tokens=result.input_tokens,
                output_tokens=result.output_tokens,
                cached_input_tokens=result.cached_tokens,
                reasoning_tokens=result.reasoning_tokens,
                reasoning=result.reasoning,
                refusal=result.refusal,
                logprobs=result.logprobs,
                choices=result.choices,
                service_tier=result.service_tier,
                system_fingerprint=result.system_fingerprint,
                usage_estimated=result.usage_estimated,
                provider_latency_ms=result.latency_ms,
                response_model=result.response_model,
                response_id=result.response_id,
                cost_micros=total,
                finished_at=timezone.now(),
                lease_expires_at=None,
            )
        )
        # Charged even when the job was cancelled while the provider answered: the
        # call was made. One charge per call (a unique constraint).
        ledger_record(
            kind=LedgerKind.CHARGE,
            user_id=job.user_id,
            job_id=job.pk,
            attempt=job.attempts,
            call=step,
            model=spec.slug,
            input_tokens=result.input_tokens,
            output_tokens=result.output_tokens,
            cost=cost,
            at=held_at,
        )
        if not succeeded:  # cancelled while the provider answered: the row shows what it cost
            cancelled = Job.objects.filter(pk=job.pk, status=JobStatus.CANCELLED, attempts=job.attempts).update(
                cost_micros=total, input_tokens=result.input_tokens, output_tokens=result.output_tokens
            )
            if not cancelled and job_superseded(job):
                logger.warning("job %s: attempt %d answered after it was taken over; only charged", job.pk,
                               job.attempts)  # fmt: skip
                return False, cost
    # Its own accounting first, before anything that may fail (listeners, webhook):
    # the charge is in the ledger, so the counters must get it (retried until they do).
    job_hold_settle(job_id=job.pk, cost=total)
    used = result.input_tokens + result.output_tokens + lost_tokens(job)
    job_tokens_settle(job=job, spec=requested or spec, used=used)
    if succeeded:
        logger.info(
            "job %s succeeded: %s answered (tier %d), %d+%d tokens, %d micro-USD",
            job.pk,
            spec.slug,
            step + 1,
            result.input_tokens,
            result.output_tokens,
            cost,
        )
    return succeeded, total


def job_superseded(job: Job) -> bool:
    """Whether another attempt claimed the job since this one did."""
    return Job.objects.filter(pk=job.pk).exclude(attempts=job.attempts).exists()


def job_stop_charge(*, job: Job, stop: CallStopped, requested: ModelSpec | None, held_at: datetime) -> None:
    """A call stopped by a cancel or by the job's deadline: charge what it used (its
    input once it was sent, the text it streamed), settle that into the budget
    whatever happened to the hold, give the rate-limit tokens back once. A call
    stopped because its job was taken over (`superseded`) or handed back at
    shutdown (`handback`) is charged by the attempt that starts it over (from its
    stream: restarts.py); this one writes nothing more."""
    if stop.reason in ("superseded", "handback"):
        return
    step_spec = stop.spec or requested
    used_in = used_out = cost = 0
    if step_spec is not None and (stop.sent or stop.partial_output):
        used_in = job.input_tokens_estimate or 0
        used_out = count_text_tokens(stop.partial_output, step_spec.encoding)
        cost = call_cost(step_spec, input_tokens=used_in, output_tokens=used_out, tier=job_served_tier(job, step_spec))
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
    total = cost + lost_cost(job)
    Job.objects.filter(pk=job.pk, status__in=[JobStatus.RUNNING, JobStatus.CANCELLED], attempts=job.attempts).update(
        cost_micros=total, input_tokens=used_in, output_tokens=used_out, usage_estimated=True
    )
    metrics.record_cost(current_schema(), step_spec.slug if step_spec else job.model, cost)
    job_hold_settle(job_id=job.pk, cost=total)
    if step_spec is not None:
        job_tokens_settle(job=job, spec=requested or step_spec, used=used_in + used_out + lost_tokens(job))
    logger.info("job %s: call stopped (%s) after %d+%d tokens, %d micro-USD", job.pk, stop.reason, used_in,
                used_out, cost)  # fmt: skip


def job_partial_charge(*, job: Job, spec: ModelSpec, output: str, call: int = 0) -> None:
    """A call that failed after the provider generated text: the provider bills
    those tokens, so the ledger shows the charge, and the refund that gives it
    back (the user got no answer). Both unique per attempt; the hold is released."""
    input_tokens, output_tokens = job.input_tokens_estimate, count_text_tokens(output, spec.encoding)
    cost = call_cost(spec, input_tokens=input_tokens, output_tokens=output_tokens, tier=job_served_tier(job, spec))
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


def job_after_charge(*, job: Job, at: datetime) -> None:
    """The budget alerts and switches a charge may trip (the user's and tenant's)."""
    budget_after_charge(
        tenant_schema=current_schema(), user_id=job.user_id, tier=job.user.tier, email=job.user.email, at=at
    )
