"""Token buckets in Redis: every decision is one atomic script, on Redis's clock.

A bucket has a capacity (the burst) and a refill rate per second (continuous,
fractional). A request names all the buckets it touches (the user's, the
tenant's, the model's; for tokens and, where configured, for requests) and what
it costs in each; the script refills each to the server's current time and
either debits all of them or none, answering how long until the request would
pass. A cost above a bucket's capacity can never pass and is reported as such,
not as an endless wait. After the call, `buckets_adjust` credits back what was
estimated but not used, or debits the excess (a bucket may go negative: the next
requests wait).

State per bucket: a hash `tokens`, `ts` (Redis TIME, seconds as a float), expiring
once a full refill would have made it irrelevant. This module is the mechanism;
the limits come from configuration (tier, tenant, user, model).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

import redis
from django.conf import settings
from redis.commands.core import Script

# KEYS: buckets. ARGV: per bucket its capacity, refill per second and cost.
# -> {1, 0, 0, level...}: debited all; each bucket's level after
#    {0, i, wait, level...}: debited none; bucket i needs the longest, `wait` seconds
#    {-1, i}: the cost exceeds bucket i's capacity (never passes)
_TAKE = """
local now = redis.call('TIME')
now = tonumber(now[1]) + tonumber(now[2]) / 1000000
local levels = {}
local wait, slowest = 0, 0
for i = 1, #KEYS do
  local capacity = tonumber(ARGV[3 * i - 2])
  local rate = tonumber(ARGV[3 * i - 1])
  local cost = tonumber(ARGV[3 * i])
  if cost > capacity then return {-1, i} end
  local state = redis.call('HMGET', KEYS[i], 'tokens', 'ts')
  local tokens = tonumber(state[1]) or capacity
  local ts = tonumber(state[2]) or now
  tokens = math.min(capacity, tokens + math.max(0, now - ts) * rate)
  levels[i] = tokens
  if tokens < cost then
    local need = (cost - tokens) / rate
    if need > wait then wait, slowest = need, i end
  end
end
local out
if wait > 0 then
  out = {0, slowest, tostring(wait)}
  for i = 1, #KEYS do out[i + 3] = tostring(levels[i]) end
  return out
end
out = {1, 0, '0'}
for i = 1, #KEYS do
  local capacity = tonumber(ARGV[3 * i - 2])
  local rate = tonumber(ARGV[3 * i - 1])
  local left = levels[i] - tonumber(ARGV[3 * i])
  redis.call('HSET', KEYS[i], 'tokens', tostring(left), 'ts', tostring(now))
  redis.call('EXPIRE', KEYS[i], math.ceil(capacity / rate) + 60)
  out[i + 3] = tostring(left)
end
return out
"""

# KEYS: buckets. ARGV: per bucket its capacity, refill per second and delta
# (positive credits, negative debits). Refills to now first; never above capacity.
_ADJUST = """
local now = redis.call('TIME')
now = tonumber(now[1]) + tonumber(now[2]) / 1000000
for i = 1, #KEYS do
  local capacity = tonumber(ARGV[3 * i - 2])
  local rate = tonumber(ARGV[3 * i - 1])
  local delta = tonumber(ARGV[3 * i])
  if delta ~= 0 then
    local state = redis.call('HMGET', KEYS[i], 'tokens', 'ts')
    local tokens = tonumber(state[1]) or capacity
    local ts = tonumber(state[2]) or now
    tokens = math.min(capacity, tokens + math.max(0, now - ts) * rate + delta)
    redis.call('HSET', KEYS[i], 'tokens', tostring(tokens), 'ts', tostring(now))
    redis.call('EXPIRE', KEYS[i], math.ceil(capacity / rate) + math.ceil(math.max(0, -tokens) / rate) + 60)
  end
end
return 1
"""


class Unit(StrEnum):
    """What a bucket counts; also the suffix of its OpenAI-style headers."""

    TOKENS = "tokens"
    REQUESTS = "requests"


@dataclass(frozen=True)
class Bucket:
    key: str
    capacity: float  # in `unit`s
    per_second: float  # refill
    name: str = ""  # for people: "your token rate limit"
    unit: Unit = Unit.TOKENS

    @classmethod
    def per_minute(cls, key: str, *, tokens_per_minute: float, burst: float | None = None) -> Bucket:
        """A limit as operators write it: tokens per minute, the burst defaulting to one minute's worth."""
        return cls(key, burst if burst is not None else tokens_per_minute, tokens_per_minute / 60)

    def seconds_to_full(self, level: float) -> float:
        return max(0.0, (self.capacity - level) / self.per_second)


@dataclass(frozen=True)
class Decision:
    admitted: bool
    bucket: Bucket | None = None  # the one that refused (or can never take the cost)
    retry_after: float = 0.0  # seconds until the request would pass (refused)
    never: bool = False  # the cost exceeds `bucket`'s capacity
    levels: tuple[float, ...] = ()  # each bucket's level: after the debit, or as it stands when refused

    @property
    def retry_after_header(self) -> str:
        return str(max(1, math.ceil(self.retry_after)))


@functools.cache
def limiter_redis() -> redis.Redis:
    """The client for the buckets: RATE_LIMIT_REDIS_URL (the platform's Redis by
    default). Short timeouts: admission must answer quickly, even to say no."""
    timeout = settings.RATE_LIMIT_REDIS_TIMEOUT_SECONDS
    pool = redis.BlockingConnectionPool.from_url(
        settings.RATE_LIMIT_REDIS_URL,
        max_connections=settings.REDIS_MAX_CONNECTIONS,
        timeout=timeout,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
    )
    return redis.Redis(connection_pool=pool)


@functools.cache
def _script(source: str) -> Script:
    return limiter_redis().register_script(source)


def _args(buckets: Sequence[Bucket], values: Sequence[float]) -> list[float]:
    return [v for b, value in zip(buckets, values, strict=True) for v in (b.capacity, b.per_second, value)]


def buckets_take(buckets: Sequence[Bucket], costs: Sequence[float]) -> Decision:
    """Debit each bucket its cost (`costs` runs parallel to `buckets`), or debit none."""
    if not buckets:
        raise ValueError("no buckets to take from")
    result = _script(_TAKE)(keys=[b.key for b in buckets], args=_args(buckets, costs))
    status, index = int(result[0]), int(result[1]) - 1
    if status == -1:
        return Decision(False, buckets[index], never=True)
    levels = tuple(float(level) for level in result[3:])
    if status == 0:
        return Decision(False, buckets[index], retry_after=float(result[2]), levels=levels)
    return Decision(True, levels=levels)


def buckets_peek(buckets: Sequence[Bucket]) -> tuple[float, ...]:
    """Each bucket's level now, debiting nothing."""
    if not buckets:
        return ()
    return buckets_take(buckets, [0] * len(buckets)).levels


def buckets_adjust(buckets: Sequence[Bucket], deltas: Sequence[float]) -> None:
    """Reconcile after the call: credit back what was not used (delta > 0), or
    debit what was used beyond the estimate (delta < 0; the bucket may go negative)."""
    if buckets and any(deltas):
        _script(_ADJUST)(keys=[b.key for b in buckets], args=_args(buckets, deltas))
