"""Heartbeats: a running job's lease, renewed every few seconds by its worker.

A claim (execute.job_claim) gives the job a short lease, JOB_LEASE_SECONDS, in
Postgres (`lease_expires_at`, the truth a takeover is decided by) and in Redis
(`aip:job-leases`, one sorted set for the platform, member `<schema>/<job id>`,
scored by the lease's expiry in ms: the index the lease sweep reads instead of
scanning every tenant schema). Each worker process runs one heartbeat (a
thread; a greenlet under gevent) that, every JOB_HEARTBEAT_SECONDS, renews the
leases of all the jobs it runs: one ZADD, and one UPDATE per tenant schema that
renews only the rows still running under this worker's attempt.

A job the UPDATE did not renew was taken over (its lease ran out while this
worker stalled, and another worker claimed it): its call is stopped
("superseded") and its attempt writes nothing more; the new attempt owns the
job. A worker that dies stops renewing: the sweep (sweep.leases_expired, beat
every JOB_LEASE_SWEEP_SECONDS) re-sends its jobs once their leases expire, and
the first worker to claim one starts it over (restarts.py).

On SIGTERM (a warm shutdown) `handback_after` lets the running calls finish for
JOB_SHUTDOWN_GRACE_SECONDS, then stops the rest ("handback"): each is given back
at once (its lease ended, its job re-sent), not after a lease runs out.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import redis
from django.conf import settings
from django.db import DatabaseError, connection
from django.utils import timezone

from apps.core.redis import redis_client
from apps.llm.providers import CallWatch
from apps.observability import metrics
from apps.tenants.db import release_connection, tenant_connection

from .models import Job, JobStatus

logger = logging.getLogger(__name__)

LEASES_KEY = "aip:job-leases"


def lease_member(*, schema: str, job_id: uuid.UUID | str) -> str:
    return f"{schema}/{job_id}"


def lease_expiry(now: datetime | None = None) -> datetime:
    return (now or timezone.now()) + timedelta(seconds=settings.JOB_LEASE_SECONDS)


def lease_index(*, schema: str, job_id: uuid.UUID, until: datetime) -> None:
    """Put the job in the lease index, due at `until` (logged, not raised: the
    minute sweep still finds a lease Redis never got)."""
    try:
        redis_client().zadd(LEASES_KEY, {lease_member(schema=schema, job_id=job_id): int(until.timestamp() * 1000)})
    except redis.RedisError as exc:
        logger.warning("job %s: lease index not written: %s", job_id, exc)


def lease_unindex(*, schema: str, job_id: uuid.UUID) -> None:
    try:
        redis_client().zrem(LEASES_KEY, lease_member(schema=schema, job_id=job_id))
    except redis.RedisError as exc:
        logger.warning("job %s: lease index not cleared: %s", job_id, exc)


@dataclass(eq=False)
class Beat:
    """One running job, as its worker's heartbeat knows it."""

    schema: str
    job_id: uuid.UUID
    attempt: int
    watch: CallWatch
    superseded: bool = False
    handed_back: bool = False
    started: float = field(default_factory=time.monotonic)


class _Heart:
    """The process's one heartbeat for the jobs it runs."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.beats: dict[tuple[str, uuid.UUID], Beat] = {}
        self.pid = 0
        self.last_ok = time.monotonic()
        self.draining = False

    def add(self, beat: Beat) -> None:
        with self.lock:
            self.beats[(beat.schema, beat.job_id)] = beat
            if self.pid != os.getpid():  # first use in this process (or after a fork)
                self.pid = os.getpid()
                self.last_ok = time.monotonic()
                threading.Thread(target=self._run, name="job-heartbeat", daemon=True).start()
            if self.draining:  # shutting down past the grace period: nothing new runs
                beat.handed_back = True
                beat.watch.stop("handback")

    def remove(self, beat: Beat) -> None:
        with self.lock:
            if self.beats.get((beat.schema, beat.job_id)) is beat:
                del self.beats[(beat.schema, beat.job_id)]

    def age(self) -> float:
        """Seconds since the leases were last renewed (0 when no job runs)."""
        with self.lock:
            running = bool(self.beats)
        return time.monotonic() - self.last_ok if running else 0.0

    def _run(self) -> None:
        while True:
            time.sleep(settings.JOB_HEARTBEAT_SECONDS)
            try:
                self.renew()
            except Exception:  # the heartbeat must outlive any one failure
                logger.exception("job heartbeat: renewal failed")
            finally:
                release_connection()

    def renew(self) -> None:
        """Renew every running job's lease: Redis's index, then each schema's rows.
        A row that is no longer this attempt's was taken over: stop its call."""
        with self.lock:
            beats = [b for b in self.beats.values() if not b.superseded and not b.handed_back]
        if not beats:
            self.last_ok = time.monotonic()
            return
        until = lease_expiry()
        try:
            score = int(until.timestamp() * 1000)
            redis_client().zadd(LEASES_KEY, {lease_member(schema=b.schema, job_id=b.job_id): score for b in beats})
        except redis.RedisError as exc:  # Postgres's lease is the one a takeover reads
            logger.warning("job heartbeat: lease index not renewed: %s", exc)
        by_schema: dict[str, list[Beat]] = {}
        for beat in beats:
            by_schema.setdefault(beat.schema, []).append(beat)
        renewed_all = True
        for schema, group in by_schema.items():
            try:
                lost = _renew_rows(schema, group, until)
            except DatabaseError as exc:
                logger.warning("job heartbeat: leases in %s not renewed: %s", schema, exc)
                renewed_all = False
                continue
            for beat in lost:
                logger.warning("job %s: attempt %d was taken over by another worker; stopping it", beat.job_id,
                               beat.attempt)  # fmt: skip
                beat.superseded = True
                beat.watch.stop("superseded")
        if renewed_all:
            self.last_ok = time.monotonic()

    def drain(self) -> int:
        """Stop every running call to hand its job back (the grace period is over)."""
        with self.lock:
            self.draining = True
            beats = list(self.beats.values())
        for beat in beats:
            beat.handed_back = True
            beat.watch.stop("handback")
        return len(beats)


def _renew_rows(schema: str, beats: list[Beat], until: datetime) -> list[Beat]:
    """One UPDATE renewing the rows still running under these attempts; the beats
    whose row is another attempt's now (taken over)."""
    tenant_connection().set_schema(schema)
    table = connection.ops.quote_name(Job._meta.db_table)
    values = ", ".join(["(%s::uuid, %s::int)"] * len(beats))
    params: list[Any] = [until]
    for beat in beats:
        params += [str(beat.job_id), beat.attempt]
    params.append(JobStatus.RUNNING)
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {table} AS j SET lease_expires_at = %s FROM (VALUES {values}) AS v(id, attempt)"
            " WHERE j.id = v.id AND j.status = %s AND j.attempts = v.attempt RETURNING j.id",
            params,
        )
        renewed = {row[0] for row in cursor.fetchall()}
    missing = [b for b in beats if b.job_id not in renewed]
    if not missing:
        return []
    # Not renewed: finished (its worker is closing it), or another attempt's now.
    attempts = dict(Job.objects.filter(pk__in=[b.job_id for b in missing]).values_list("pk", "attempts"))
    return [b for b in missing if attempts.get(b.job_id, b.attempt) != b.attempt]


_heart = _Heart()
metrics.heartbeat_age_gauge(_heart.age)


@contextlib.contextmanager
def beating(*, schema: str, job: Job, watch: CallWatch) -> Iterator[Beat]:
    """Renew the job's lease while the block runs; then take it out of the index
    unless another attempt owns it now or it was handed back (whose re-sent
    message the index still watches)."""
    beat = Beat(schema=schema, job_id=job.pk, attempt=job.attempts, watch=watch)
    _heart.add(beat)
    try:
        yield beat
    finally:
        _heart.remove(beat)
        if not beat.superseded and not beat.handed_back:
            lease_unindex(schema=schema, job_id=job.pk)


def draining() -> bool:
    """Whether this worker is past its grace period, handing its jobs back."""
    return _heart.draining


def handback_after(grace_seconds: float, *, stop_consuming: Callable[[], None]) -> None:
    """A warm shutdown began: stop taking messages now (`stop_consuming`), and after
    `grace_seconds` stop the calls still running so their jobs are handed back.
    Returns at once: called from a signal handler, which under gevent runs in the
    event loop and must not block (a greenlet there, a thread otherwise)."""

    def run() -> None:
        try:
            stop_consuming()
        except Exception:
            logger.exception("shutting down: could not stop consuming")
        time.sleep(grace_seconds)
        stopped = _heart.drain()
        if stopped:
            logger.warning("shutting down: handing back %d running job(s)", stopped)

    gevent = sys.modules.get("gevent")
    if gevent is not None and gevent.monkey.is_module_patched("threading"):
        gevent.spawn(run)
    else:
        threading.Thread(target=run, name="job-handback", daemon=True).start()


def job_hand_back(*, job: Job) -> None:
    """Give a job back at shutdown: its lease ends now and it is re-sent, so the
    next free worker starts it over at once. Only while this attempt owns it."""
    from .enqueue import job_enqueue

    now = timezone.now()
    if Job.objects.filter(pk=job.pk, status=JobStatus.RUNNING, attempts=job.attempts).update(
        lease_expires_at=now - timedelta(seconds=1), enqueued_at=now
    ):
        lease_index(schema=connection.schema_name, job_id=job.pk, until=lease_expiry(now))  # type: ignore[attr-defined]
        job_enqueue(job_id=job.pk, model=job.model)
        metrics.record_takeover("handback")
        logger.warning("job %s: handed back (attempt %d) as the worker shuts down", job.pk, job.attempts)


def job_resend(*, job_id: uuid.UUID) -> None:
    """Send a job this worker will not run (it is shutting down) to its queue again."""
    from .enqueue import job_enqueue

    model = Job.objects.filter(pk=job_id).values_list("model", flat=True).first()
    if model is not None:
        job_enqueue(job_id=job_id, model=model)
