"""A job's event stream: the worker appends, any number of listeners read.

One Redis Stream per job, `aip:<schema>:job:<id>` (tenant-scoped by key). Entries
carry one JSON field `d`: `delta` (text), `usage`, `done` (final status, finish
reason) or `error` (type, message). Deltas are coalesced: at most one entry per
JOB_STREAM_COALESCE_MS per job, so a thousand concurrent streams do not mean tens
of thousands of writes a second. Each stream is capped (MAXLEN ~) and every
append sets its expiry in the same round trip: while the job runs, the longest a
job may run plus JOB_STREAM_TTL_SECONDS (refreshed by each entry), and
JOB_STREAM_TTL_SECONDS from its closing events. So no stream outlives its job
for long, whatever ends it (a job deleted mid-run, a failed final write, a
worker that died); the final result stays in Postgres.
The entry id is the SSE event id, so a listener resumes exactly where it left off.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from typing import Any

import redis
from django.conf import settings

from apps.core.redis import redis_client
from apps.tenants.db import current_schema

FINAL_EVENTS = frozenset({"done", "error"})


def stream_key(*, schema: str, job_id: uuid.UUID | str) -> str:
    return f"aip:{schema}:job:{job_id}"


def _redis() -> redis.Redis:
    return redis_client()


def _encode(event: dict[str, Any]) -> dict[str, str]:
    return {"d": json.dumps(event, separators=(",", ":"), ensure_ascii=False)}


class EventRelay:
    """Worker side: buffers deltas and appends them at most once per coalescing
    window. Not shared between jobs; called from the thread running the job."""

    def __init__(self, *, job_id: uuid.UUID, schema: str | None = None) -> None:
        self.key = stream_key(schema=schema or current_schema(), job_id=job_id)
        self.window = settings.JOB_STREAM_COALESCE_MS / 1000
        self.maxlen = settings.JOB_STREAM_MAXLEN
        self.buffer: list[str] = []
        self.last_flush = 0.0
        self.lock = threading.Lock()

    def delta(self, text: str) -> None:
        self.buffer.append(text)
        if time.monotonic() - self.last_flush >= self.window:
            self.flush()

    def flush(self) -> None:
        if self.buffer:
            text, self.buffer = "".join(self.buffer), []
            self._append({"type": "delta", "text": text})
        self.last_flush = time.monotonic()

    def event(self, event: dict[str, Any]) -> None:
        """Append an event now, after the deltas buffered before it."""
        self.flush()
        self._append(event)

    def final(self, *events: dict[str, Any]) -> None:
        """Flush, append the closing events and start the stream's expiry clock."""
        self.flush()
        pipe = _redis().pipeline(transaction=False)
        for event in events:
            pipe.xadd(self.key, _encode(event), maxlen=self.maxlen, approximate=True)  # type: ignore[arg-type]
        pipe.expire(self.key, settings.JOB_STREAM_TTL_SECONDS)
        pipe.execute()

    def _append(self, event: dict[str, Any]) -> None:
        pipe = _redis().pipeline(transaction=False)
        pipe.xadd(self.key, _encode(event), maxlen=self.maxlen, approximate=True)  # type: ignore[arg-type]
        pipe.expire(self.key, live_ttl_seconds())
        pipe.execute()


def live_ttl_seconds() -> int:
    """A running job's stream expiry, refreshed by each entry: the longest a job
    may run (its task's hard limit, or the longest model deadline with one call
    on top) and the finished stream's time, so a stream whose job never closes it
    (deleted, its worker lost) still goes."""
    longest = max(
        int(settings.CELERY_TASK_TIME_LIMIT), settings.JOB_TIMEOUT_MAX_SECONDS + settings.LLM_REQUEST_TIMEOUT_SECONDS
    )
    return longest + settings.JOB_STREAM_TTL_SECONDS


def job_events_close(*, job_id: uuid.UUID, status: str) -> None:
    """Tell listeners a job ended without a worker saying so (e.g. cancelled while queued)."""
    EventRelay(job_id=job_id).final({"type": "done", "status": status, "finish_reason": None})
