"""A bare Celery app with one no-op task, on the same broker, serializer and
reliability settings as the platform: its round-trip throughput is the practical
ceiling for jobs/s on this machine."""

import os

from celery import Celery

app = Celery("noop", broker=os.environ["REDIS_URL"], backend=os.environ["REDIS_URL"])
app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    result_serializer="json",
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    task_default_queue="noop",
)


@app.task(name="noop")
def noop() -> None:
    return None
