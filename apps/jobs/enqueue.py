"""Sending a job to its model's queue (by task name: see apps.core.dispatch),
and taking an unrun one back."""

from __future__ import annotations

import uuid

from django.conf import settings

from apps.catalog.selectors import model_get
from apps.core.dispatch import task_revoke, task_send


def job_enqueue(*, job_id: uuid.UUID, model: str) -> None:
    """Send the job to its model's queue (`jobs.run`, routed by `model`). The
    Celery task id is the job id, so a cancel can revoke it without storing
    anything else."""
    spec = model_get(model)
    timeout = spec.job_timeout if spec is not None else settings.JOB_DEADLINE_SECONDS
    # The job stops itself at its deadline; the task limits only catch what did not.
    limits = (
        {"soft_time_limit": timeout + settings.LLM_REQUEST_TIMEOUT_SECONDS + 30,
         "time_limit": timeout + settings.LLM_REQUEST_TIMEOUT_SECONDS + 60}
        if timeout > settings.JOB_DEADLINE_SECONDS
        else {}
    )  # fmt: skip
    task_send("jobs.run", kwargs={"job_id": str(job_id), "model": model}, task_id=str(job_id), **limits)


def job_revoke(*, job_id: uuid.UUID) -> None:
    """Workers drop the job's message unrun; one that races past the revoke still
    finds the job cancelled and does nothing."""
    task_revoke(str(job_id))
