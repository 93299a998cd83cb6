from __future__ import annotations

import uuid

from django.db.models import QuerySet

from apps.accounts.selectors import Principal

from .models import Job


def jobs_for_principal(principal: Principal) -> QuerySet[Job]:
    """The jobs a caller may see: their own. Other users' and other tenants' jobs
    are simply absent (404), never forbidden (403), so ids leak nothing."""
    return Job.objects.filter(user_id=principal.user_id)


def job_get(*, principal: Principal, job_id: uuid.UUID | str) -> Job | None:
    """The caller's job, or None, also for an id that is not a UUID at all."""
    if not isinstance(job_id, uuid.UUID):
        try:
            job_id = uuid.UUID(job_id)
        except ValueError:
            return None
    return jobs_for_principal(principal).filter(pk=job_id).first()


def job_list(*, principal: Principal, status: str | None = None, model: str | None = None) -> QuerySet[Job]:
    jobs = jobs_for_principal(principal)
    if status:
        jobs = jobs.filter(status=status)
    if model:
        jobs = jobs.filter(model=model)
    return jobs.order_by("-created_at")
