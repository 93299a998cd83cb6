"""Every Celery queue, declared once.

Static queues are the `CeleryQueue` enum: `default` is housekeeping (the beat
sweeps: lost jobs, budget holds, cache eviction, period resets), and nothing that
waits on a tenant's server may run there; `webhooks` carries every outbound call
to a tenant's URL (completion webhooks, budget alerts), on its own workers, so a
slow receiver holds only a webhook thread. Each catalog model gets its own queue,
`llm.<slug>`, so a provider's workers can be sized to that provider's limits and
a slow provider never holds up another's jobs. Worker command lines come from
`manage.py worker_queues` (which reads this module and the catalog).
"""

from __future__ import annotations

import functools
from enum import StrEnum
from typing import Any

from kombu import Exchange, Queue

LLM_QUEUE_PREFIX = "llm."


class CeleryQueue(StrEnum):
    DEFAULT = "default"  # housekeeping: sweeps, beat jobs (a lane nothing else blocks)
    WEBHOOKS = "webhooks"  # calls to tenants' URLs: completion webhooks, budget alerts


def llm_queue(model_slug: str) -> str:
    return f"{LLM_QUEUE_PREFIX}{model_slug}"


# Tasks routed by the model they call. The router sees keyword arguments only,
# so these tasks must be sent with `model=` as a kwarg.
MODEL_ROUTED_TASKS = frozenset({"jobs.run"})

# Tasks on a static queue other than housekeeping's.
TASK_QUEUES = {"webhooks.send": CeleryQueue.WEBHOOKS, "alerts.send": CeleryQueue.WEBHOOKS}


# Messages go through the default (nameless) exchange, whose routing key is the
# queue itself: on the Redis transport that is one LPUSH, where a named direct
# exchange costs an extra SMEMBERS round trip per message to read its bindings.
_DEFAULT_EXCHANGE = Exchange("", type="direct")


@functools.lru_cache(maxsize=1024)
def queue(name: str) -> Queue:
    return Queue(name, exchange=_DEFAULT_EXCHANGE, routing_key=name)


def route_task(
    name: str, args: Any, kwargs: dict[str, Any] | None, options: dict[str, Any], task: Any = None, **kw: Any
) -> dict[str, Queue]:
    if name in MODEL_ROUTED_TASKS:
        model = (kwargs or {}).get("model")
        if not model:
            raise ValueError(f"task {name} must be sent with a model= keyword argument")
        return {"queue": queue(llm_queue(str(model)))}
    return {"queue": queue(TASK_QUEUES.get(name, CeleryQueue.DEFAULT).value)}
