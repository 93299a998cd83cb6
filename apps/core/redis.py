"""The process's synchronous Redis client (web threads, Celery workers)."""

from __future__ import annotations

import functools

import redis
from django.conf import settings


@functools.cache
def redis_client() -> redis.Redis:
    # Blocking: with hundreds of jobs in one worker (gevent pool) more callers may
    # need a connection at once than the pool holds; they wait for one instead of
    # failing with MaxConnectionsError.
    pool = redis.BlockingConnectionPool.from_url(
        settings.REDIS_URL, max_connections=settings.REDIS_MAX_CONNECTIONS, timeout=10
    )
    return redis.Redis(connection_pool=pool)
