"""Token buckets in Redis: every decision is one atomic script, on Redis's clock.

A bucket has a capacity (the burst) and a refill rate in tokens per second
(continuous, fractional). A request names all the buckets it touches (the user's,
the tenant's, the model's) and a cost in tokens; the script refills each to the
server's current time and either debits all of them or none, answering how long
until the request would pass. A cost above a bucket's capacity can never pass and
is reported as such, not as an endless wait. After the call, `buckets_adjust`
credits back what was estimated but not used, or debits the excess (a bucket may
go negative: the next requests wait).

State per bucket: a hash `tokens`, `ts` (Redis TIME, seconds as a float), expiring
once a full refill would have made it irrelevant. This module is the mechanism;
the limits come from configuration (tier, tenant, user, model TPM).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

from redis.commands.core import Script

from apps.core.redis import redis_client

# KEYS: buckets. ARGV: cost, then per bucket capacity and refill per second.
# -> {1, i, remaining}: debited all; bucket i is the tightest, `remaining` after
#    {0, i, wait}: debited none; bucket i needs the longest, `wait` seconds
#    {-1, i}: the cost exceeds bucket i's capacity (never passes)
_TAKE = """
local now = redis.call('TIME')
now = tonumber(now[1]) + tonumber(now[2]) / 1000000
local cost = tonumber(ARGV[1])
local levels = {}
local wait, slowest = 0, 0
local tightest, lowest = 1, math.huge
for i = 1, #KEYS do
  local capacity = tonumber(ARGV[2 * i])
  local rate = tonumber(ARGV[2 * i + 1])
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
  if tokens - cost < lowest then tightest, lowest = i, tokens - cost end
end
if wait > 0 then return {0, slowest, tostring(wait)} end
for i = 1, #KEYS do
  local capacity = tonumber(ARGV[2 * i])
  local rate = tonumber(ARGV[2 * i + 1])
  redis.call('HSET', KEYS[i], 'tokens', tostring(levels[i] - cost), 'ts', tostring(now))
  redis.call('EXPIRE', KEYS[i], math.ceil(capacity / rate) + 60)
end
return {1, tightest, tostring(lowest)}
"""

# KEYS: buckets. ARGV: delta (positive credits, negative debits), then per bucket
# capacity and refill per second. Refills to now first; never above capacity.
_ADJUST = """
local now = redis.call('TIME')
now = tonumber(now[1]) + tonumber(now[2]) / 1000000
local delta = tonumber(ARGV[1])
for i = 1, #KEYS do
  local capacity = tonumber(ARGV[2 * i])
  local rate = tonumber(ARGV[2 * i + 1])
  local state = redis.call('HMGET', KEYS[i], 'tokens', 'ts')
  local tokens = tonumber(state[1]) or capacity
  local ts = tonumber(state[2]) or now
  tokens = math.min(capacity, tokens + math.max(0, now - ts) * rate + delta)
  redis.call('HSET', KEYS[i], 'tokens', tostring(tokens), 'ts', tostring(now))
  redis.call('EXPIRE', KEYS[i], math.ceil(capacity / rate) + math.ceil(math.max(0, -tokens) / rate) + 60)
end
return 1
"""


@dataclass(frozen=True)
class Bucket:
    key: str
    capacity: float  # tokens
    per_second: float  # refill
    name: str = ""  # for people: "your token rate limit"

    @classmethod
    def per_minute(cls, key: str, *, tokens_per_minute: float, burst: float | None = None) -> Bucket:
        """A limit as operators write it: tokens per minute, the burst defaulting to one minute's worth."""
        return cls(key, burst if burst is not None else tokens_per_minute, tokens_per_minute / 60)


@dataclass(frozen=True)
class Decision:
    admitted: bool
    bucket: Bucket  # the tightest after an admission; the one that refused otherwise
    remaining: float = 0.0  # tokens left in `bucket` (admitted)
    retry_after: float = 0.0  # seconds until the request would pass (refused)
    never: bool = False  # the cost exceeds `bucket`'s capacity

    @property
    def retry_after_header(self) -> str:
        return str(max(1, math.ceil(self.retry_after)))


@functools.cache
def _script(source: str) -> Script:
    return redis_client().register_script(source)


def _args(buckets: Sequence[Bucket]) -> list[float]:
    return [value for b in buckets for value in (b.capacity, b.per_second)]


def buckets_take(buckets: Sequence[Bucket], cost: float) -> Decision:
    """Debit `cost` tokens from every bucket, or from none."""
    if not buckets:
        raise ValueError("no buckets to take from")
    result = _script(_TAKE)(keys=[b.key for b in buckets], args=[cost, *_args(buckets)])
    status, index = int(result[0]), int(result[1]) - 1
    if status == -1:
        return Decision(False, buckets[index], never=True)
    if status == 0:
        return Decision(False, buckets[index], retry_after=float(result[2]))
    return Decision(True, buckets[index], remaining=float(result[2]))


def buckets_adjust(buckets: Sequence[Bucket], delta: float) -> None:
    """Reconcile after the call: credit back unused tokens (delta > 0), or debit
    what was used beyond the estimate (delta < 0; the buckets may go negative)."""
    if buckets and delta:
        _script(_ADJUST)(keys=[b.key for b in buckets], args=[delta, *_args(buckets)])
