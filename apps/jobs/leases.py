"""Caps on long-lived connections: open SSE streams (`/api/v1/jobs/{id}/events`),
streaming `/v1/chat/completions` and non-stream `/v1` waits, per API key
(STREAMS_PER_KEY) and per tenant (STREAMS_PER_TENANT).

Each open connection holds a lease: one member in two sorted sets in Redis, the
key's and the tenant's, scored by its expiry. Taking one is one script that drops
the expired members, checks both counts and adds to both, so concurrent requests
on any number of web processes cannot overshoot. A lease is renewed while its
connection lives and removed when it ends; the lease of a killed web process
expires after STREAM_LEASE_SECONDS, so no slot is lost for longer.

The renewal (every SSE_HEARTBEAT_SECONDS, on the heartbeat or the next event)
also re-reads the key from Postgres, past the principal cache: a key revoked, or
whose user was deactivated, while its streams are open ends them there.
"""

from __future__ import annotations

import functools
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.http import HttpResponseBase
from redis.commands.core import Script

from apps.accounts.models import ApiKey
from apps.accounts.selectors import Principal
from apps.core.errors import ApiError
from apps.core.redis import redis_client
from apps.core.threads import in_thread
from apps.tenants.db import release_connection, tenant_connection

from .hub import stream_hub

# A refused caller retries after this long: slots free as streams end, which no
# count predicts.
RETRY_AFTER_SECONDS = 5

# KEYS: the key's set, the tenant's set. ARGV: member, lease ms, key cap, tenant cap.
# 0: taken; 1: the key is at its cap; 2: the tenant is.
_ACQUIRE = """
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local lease_ms = tonumber(ARGV[2])
for i = 1, 2 do redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now_ms) end
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then return 1 end
if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[4]) then return 2 end
for i = 1, 2 do
  redis.call('ZADD', KEYS[i], now_ms + lease_ms, ARGV[1])
  redis.call('PEXPIRE', KEYS[i], lease_ms)
end
return 0
"""

# KEYS: the key's set, the tenant's set. ARGV: member, lease ms.
_RENEW = """
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
for i = 1, 2 do
  redis.call('ZADD', KEYS[i], now_ms + tonumber(ARGV[2]), ARGV[1])
  redis.call('PEXPIRE', KEYS[i], tonumber(ARGV[2]))
end
return 0
"""


class TooManyStreams(ApiError):
    status_code = 429
    error_type = "rate_limit_error"
    code = "too_many_streams"


class KeyRevoked(Exception):
    """The key behind an open stream no longer authenticates."""


@functools.cache
def _script(source: str) -> Script:
    return redis_client().register_script(source)


def _lease_ms() -> int:
    # Renewed every heartbeat: the lease outlives a few missed renewals.
    return 1000 * max(settings.STREAM_LEASE_SECONDS, 3 * settings.SSE_HEARTBEAT_SECONDS)


def lease_keys(*, tenant_schema: str, key_id: int) -> list[str]:
    return [f"aip:{{{tenant_schema}}}:streams:key:{key_id}", f"aip:{{{tenant_schema}}}:streams:tenant"]


@dataclass(eq=False)
class StreamLease:
    tenant_schema: str
    key_id: int
    member: str
    checked: float = field(default_factory=time.monotonic)
    released: bool = False

    @property
    def keys(self) -> list[str]:
        return lease_keys(tenant_schema=self.tenant_schema, key_id=self.key_id)

    def due(self) -> bool:
        """Whether a renewal is due (every SSE_HEARTBEAT_SECONDS); marks it done."""
        if time.monotonic() - self.checked < settings.SSE_HEARTBEAT_SECONDS:
            return False
        self.checked = time.monotonic()
        return True

    async def tick(self) -> None:
        """Called on each event: when due, renew the lease and re-read the key (one
        thread hop). Raises KeyRevoked."""
        if self.due() and not await in_thread(self.refresh):
            raise KeyRevoked("The API key was revoked.")

    def refresh(self) -> bool:
        """Renew; False (and released) when the key is revoked or its user is
        inactive. Runs in a thread: it reads Postgres."""
        tenant_connection().set_schema(self.tenant_schema)
        try:
            alive = ApiKey.objects.filter(pk=self.key_id, revoked_at__isnull=True, user__is_active=True).exists()
        finally:
            release_connection()
        if not alive:
            self.release_sync()
            return False
        if not self.released:
            _script(_RENEW)(keys=self.keys, args=[self.member, _lease_ms()])
        return True

    def release_sync(self) -> None:
        if not self.released:
            self.released = True
            pipeline = redis_client().pipeline(transaction=False)
            for key in self.keys:
                pipeline.zrem(key, self.member)
            pipeline.execute()

    async def release(self) -> None:
        """Give the slot back (idempotent): the connection ended."""
        if self.released:
            return
        self.released = True
        pipeline = stream_hub().commands.pipeline(transaction=False)
        for key in self.keys:
            pipeline.zrem(key, self.member)
        await pipeline.execute()


def lease_acquire(*, principal: Principal) -> StreamLease:
    """A slot for one long-lived connection of this key, or TooManyStreams (429
    with Retry-After). Sync: taken in the thread that authenticated the request."""
    lease = StreamLease(tenant_schema=principal.tenant_schema, key_id=principal.key_id, member=uuid.uuid4().hex)
    per_key, per_tenant = settings.STREAMS_PER_KEY, settings.STREAMS_PER_TENANT
    refused = _script(_ACQUIRE)(keys=lease.keys, args=[lease.member, _lease_ms(), per_key, per_tenant])
    if refused:
        if refused == 1:
            owner, cap, name = "This API key", per_key, "STREAMS_PER_KEY"
        else:
            owner, cap, name = "Your tenant", per_tenant, "STREAMS_PER_TENANT"
        raise TooManyStreams(
            f"{owner} already has {cap} open streams or waiting requests ({name}); close one, or retry later.",
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        )
    return lease


def release_on_close(response: HttpResponseBase, lease: StreamLease) -> None:
    """Have aiplatform.asgi's StreamHandler release `lease` once the response is
    sent or its client is gone, even if the body's generator never started."""
    closers: list[Callable[[], Awaitable[Any]]] = getattr(response, "async_closers", [])
    closers.append(lease.release)
    response.async_closers = closers  # type: ignore[attr-defined]
