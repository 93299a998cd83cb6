"""Holds nothing else will settle, repaired from what became of their jobs (the
`budgets.sweep` beat task, per tenant). Billing lists the holds and settles or
releases them; the job table, which only this app reads, says which to do."""

from __future__ import annotations

import time

from apps.billing.budgets import budget_release, budget_settle, holds_list

from .models import FINAL_STATUSES, Job, JobStatus


def holds_repair(*, schema: str, stale_after_seconds: int = 600) -> dict[str, int]:
    """Repair holds that nothing will settle, in one tenant (beat, every few
    minutes): a job that ended without settling (its worker died, the sweeper
    failed it) gets its charge, or nothing, settled; a hold whose job was never
    stored (the web process died between the two) is released once it is older
    than `stale_after_seconds`. Jobs still queued or running keep theirs."""
    now = time.time()
    settled = released = 0
    for job_id, held_at in holds_list(schema=schema):
        job = Job.objects.filter(pk=job_id).values("status", "cost_micros", "started_at", "finished_at").first()
        if job is None:
            if held_at is not None and now - held_at.timestamp() > stale_after_seconds:
                released += budget_release(schema=schema, job_id=job_id)
        elif job["status"] in FINAL_STATUSES:
            # A job cancelled while it ran is settled by its worker, which stops the
            # call within a second or so and charges what it used; settling it here
            # first would only free its room early. Its worker gone, it is settled
            # later (and a late worker still adds its cost: settle is order-free).
            finished = job["finished_at"]
            if (
                job["status"] == JobStatus.CANCELLED
                and job["started_at"] is not None
                and finished is not None
                and finished.timestamp() > now - 60
            ):
                continue
            settled += budget_settle(schema=schema, job_id=job_id, actual_micros=job["cost_micros"] or 0)
    return {"settled": settled, "released": released}
