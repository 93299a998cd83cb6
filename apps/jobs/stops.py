"""Stopping a job's running provider call: its cancel, or its deadline.

`job_cancel` sets a flag in Redis (`aip:{<schema>}:cancel:<job>`) before it closes
the job's stream. Each worker process runs one watcher (a thread; a greenlet
under gevent) that, every JOB_STOP_CHECK_SECONDS, asks Redis about the flags of
all the calls it runs in one round trip and stops the cancelled ones (their
`CallWatch`, which closes the response: a silent provider does not keep the call
waiting); the stream loop itself stops at the job's deadline. The worker's relay
(`EventRelay(cancel_flag=...)`) checks the same flag in the same script as each
append, so once a cancel closed the stream nothing more is appended after its
closing event.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterator

import redis
from django.conf import settings

from apps.core.redis import redis_client
from apps.llm.providers import CallWatch

logger = logging.getLogger(__name__)


def cancel_key(*, schema: str, job_id: uuid.UUID | str) -> str:
    return f"aip:{{{schema}}}:cancel:{job_id}"


def cancel_flag_set(*, schema: str, job_id: uuid.UUID | str) -> None:
    """Tell the job's worker (if it runs) to stop its call. Outlives any run."""
    ttl = settings.JOB_TIMEOUT_MAX_SECONDS + settings.LLM_REQUEST_TIMEOUT_SECONDS + 3600
    redis_client().set(cancel_key(schema=schema, job_id=job_id), 1, ex=ttl)


class _Watcher:
    """The process's one poller of cancel flags for the calls it runs."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.watches: set[CallWatch] = set()
        self.pid = 0

    def add(self, watch: CallWatch) -> None:
        with self.lock:
            self.watches.add(watch)
            if self.pid != os.getpid():  # first use in this process (or after a fork)
                self.pid = os.getpid()
                threading.Thread(target=self._run, name="job-stop-watcher", daemon=True).start()

    def remove(self, watch: CallWatch) -> None:
        with self.lock:
            self.watches.discard(watch)

    def _run(self) -> None:
        while True:
            time.sleep(settings.JOB_STOP_CHECK_SECONDS)
            try:
                self.check()
            except Exception:  # the watcher must outlive any one failure
                logger.exception("job stop watcher: check failed")

    def check(self) -> None:
        with self.lock:
            watches = [w for w in self.watches if w.reason() is None and w.key]
        if not watches:
            return
        try:
            pipe = redis_client().pipeline(transaction=False)
            for watch in watches:
                pipe.exists(watch.key)
            flags = pipe.execute()
        except redis.RedisError as exc:
            logger.warning("job stop watcher: cannot read cancel flags: %s", exc)
            return
        for watch, flagged in zip(watches, flags, strict=True):
            if flagged:
                watch.stop("cancelled")


_watcher = _Watcher()


@contextlib.contextmanager
def watching(watch: CallWatch) -> Iterator[CallWatch]:
    """Watch `watch.key` for a cancel while the block runs."""
    _watcher.add(watch)
    try:
        yield watch
    finally:
        _watcher.remove(watch)
