"""The one way a service sends work to Celery: by task name.

Services never import a task module (tasks import services, never the other
way), so they name the task and the router (`tasks/queues.py`, the
CELERY_TASK_ROUTES setting) picks its queue from that name and its keyword
arguments, exactly as for `Task.apply_async`, which goes through the same
`send_task`. The tenant's schema rides in the message headers
(tenant_schemas_celery's `send_task`), so the worker runs in the sender's tenant.
"""

from __future__ import annotations

from typing import Any


def task_send(name: str, *, kwargs: dict[str, Any], **options: Any) -> None:
    """Queue task `name` with keyword arguments only (the router reads them);
    `options` are Celery's (task_id, countdown, soft_time_limit, ...). Raises
    what the broker raises: callers decide whether a lost send is fatal."""
    from aiplatform import celery_app

    celery_app.send_task(name, kwargs=kwargs, **options)


def task_revoke(task_id: str) -> None:
    """Tell every worker to drop the message with this id unrun."""
    from aiplatform import celery_app

    celery_app.control.revoke(task_id)
