"""Starting a job over: the attempt that claimed a job whose previous attempt was
lost (its worker died, stalled past its lease, or handed it back at shutdown).

Before the new attempt calls anything:
- the lost attempt's call is charged: the provider billed the tokens it streamed.
  They are counted from what its stream relayed (the events after the last
  `restart`, from its last `fallback` on: the call that was running), its input
  at the job's estimate, as that attempt's ledger entry (unique per attempt and
  call, so a stalled worker that also charges it cannot charge twice). A call
  that relayed nothing is not charged: nothing says it reached the provider.
  The charge is kept in the job's `attempt_log` (outcome `lost`), so the job's
  cost, its settlement and its rate-limit tokens include it;
- its hold grows by that charge (billing.extensions): no budget is overshot by
  the second try, and one with no room for it ends the job (`budget_exceeded`);
- listeners are told: a `restart` event with the new attempt's number, after
  which the answer starts over (a listener drops what the lost attempt showed).
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from apps.billing.extensions import budget_extend
from apps.billing.models import LedgerKind
from apps.billing.money import format_usd
from apps.billing.services import call_cost, ledger_record
from apps.catalog.selectors import ModelSpec, model_get
from apps.llm.tokens import count_text_tokens
from apps.observability import metrics
from apps.tenants.db import current_schema

from .events import EventRelay, stream_read
from .lifecycle import job_fail
from .models import Job
from .settlement import job_hold_settle, job_hold_time, job_served_tier, lost_cost

logger = logging.getLogger(__name__)


def lost_call(job: Job, events: list[dict[str, Any]]) -> tuple[str, int, str]:
    """What the lost attempt's running call relayed: (its model, its step in the
    chain, the text its tokens were counted from: every choice's text, refusal
    and tool calls)."""
    steps = [job.model, *job.fallbacks]
    model, step = job.model, 0
    pieces: list[str] = []
    for event in events:
        kind = event.get("type")
        if kind == "restart":
            model, step, pieces = job.model, 0, []
        elif kind == "fallback":
            model = str(event.get("to") or job.model)
            step, pieces = (steps.index(model) if model in steps else step + 1), []
        elif kind in ("delta", "refusal"):
            pieces.append(str(event.get("text") or ""))
        elif kind == "tool_call":
            pieces.append(str(event.get("name") or "") + str(event.get("arguments") or ""))
    return model, step, "".join(pieces)


def job_restart(*, job: Job, relay: EventRelay, prior_lease: datetime | None) -> bool:
    """Account for the lost attempt and announce the new one. False when the job
    cannot go on (its budget has no room for another try: it was failed)."""
    schema, lost = current_schema(), job.attempts - 1
    cost, chars = charge_lost_attempt(job=job, lost=lost)
    recovery = None
    if prior_lease is not None:  # from the lost attempt's last renewal to this claim
        last_renewal = prior_lease - timedelta(seconds=settings.JOB_LEASE_SECONDS)
        recovery = (timezone.now() - last_renewal).total_seconds()
    metrics.record_restart(job.model, recovery_seconds=recovery)
    logger.warning(
        "job %s: attempt %d starts over (attempt %d was lost after %d chars; charged %d micro-USD)",
        job.pk,
        job.attempts,
        lost,
        chars,
        cost,
    )
    if cost and job.reserved_micros:
        fits = budget_extend(
            schema=schema, job_id=job.pk, user_id=job.user_id, tier=job.user.tier, amount_micros=cost, tag=str(lost)
        )
        if not fits:
            job_hold_settle(job_id=job.pk, cost=lost_cost(job))  # what the lost attempts cost, into `spent`
            relay.flush()
            job_fail(
                job_id=job.pk,
                error_type="budget_exceeded",
                message=f"The job's worker was lost mid-answer (that try was charged {format_usd(cost)}); another"
                " try does not fit the remaining budget.",
                status=402,
                code="budget_exceeded",
                webhook_url=job.webhook_url,
                attempt_log=job.attempt_log,
                attempt=job.attempts,
            )
            return False
    relay.event({"type": "restart", "attempt": job.attempts})
    return True


def job_fail_lost(*, job: Job) -> None:
    """A job whose workers were lost MAX_CLAIMS times (poison input, OOM): its last
    attempt charged from its stream like any lost one, then failed."""
    charge_lost_attempt(job=job, lost=job.attempts)
    cost = lost_cost(job)
    if cost:
        job_hold_settle(job_id=job.pk, cost=cost)
    job_fail(
        job_id=job.pk,
        error_type="worker_lost",
        message=f"The job's worker stopped {job.attempts} times before finishing it.",
        webhook_url=job.webhook_url,
        attempt_log=job.attempt_log,
        attempt=job.attempts,
    )


def charge_lost_attempt(*, job: Job, lost: int) -> tuple[int, int]:
    """Charge attempt `lost`'s running call from what its stream relayed: (its
    cost, 0 when nothing was relayed or it was charged already; the characters
    counted)."""
    model, step, text = lost_call(job, stream_read(schema=current_schema(), job_id=job.pk))
    spec = model_get(model)
    if spec is None or not text:
        return 0, len(text)
    return _charge_lost(job=job, spec=spec, step=step, text=text, lost=lost), len(text)


def _charge_lost(*, job: Job, spec: ModelSpec, step: int, text: str, lost: int) -> int:
    """The lost attempt's charge, once: the ledger entry and its line in the job's
    attempt log, in one transaction. Its cost (0 when it was charged already)."""
    input_tokens, output_tokens = job.input_tokens_estimate, count_text_tokens(text, spec.encoding)
    cost = call_cost(spec, input_tokens=input_tokens, output_tokens=output_tokens, tier=job_served_tier(job, spec))
    entry = {
        "model": spec.slug,
        "started_at": None,
        "ended_at": timezone.now().isoformat(),
        "outcome": "lost",
        "error_type": "worker_lost",
        "provider_status": None,
        "message": f"Attempt {lost}'s worker was lost mid-call; charged for what its stream relayed.",
        "retries": 0,
        "attempt": lost,
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "cost_micros": cost,
    }
    with transaction.atomic():
        created = ledger_record(
            kind=LedgerKind.CHARGE,
            user_id=job.user_id,
            job_id=job.pk,
            attempt=lost,
            call=step,
            model=spec.slug,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cost=cost,
            note="worker lost mid-call (counted from its stream)",
            at=job_hold_time(job),
        )
        if not created:
            return 0
        job.attempt_log = [*job.attempt_log, entry]
        Job.objects.filter(pk=job.pk, attempts=job.attempts).update(attempt_log=job.attempt_log)
    metrics.record_cost(current_schema(), spec.slug, cost)
    return cost
