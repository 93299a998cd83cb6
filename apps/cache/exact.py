"""The exact-match cache in Redis, and single flight for identical requests.

Keys live under the tenant's own prefix, `aip:{<schema>}:cache:...`, and the
hash itself covers the tenant (policy.exact_hash): no key of one tenant can name
another's entry. An entry is the answer as JSON (output, finish reason, usage,
the provider's model name, when it was made), expiring after its TTL.

Entries live in the cache's own Valkey (CACHE_REDIS_URL: where it is separate,
`allkeys-lru` under a `maxmemory`, so answers are what gets evicted); the
flights, which coordinate jobs, stay in the main one (REDIS_URL, `noeviction`).
Each tenant keeps at most its policy's `exact_max_entries`: a sorted set per
tenant (`...:cache:exact-index`, members by expiry time) written in the same
script as the entry, which drops the expired members and, over the cap, the
entries that would expire soonest.

Single flight: the first cacheable request for a key becomes its leader (its
job is enqueued); identical requests that arrive while it runs are stored as
jobs but not enqueued: they join the leader's follower set. When the leader
succeeds it writes the entry and then takes the followers (atomically: a request
arriving after that finds the entry), completing each with its answer. When it
fails, its followers are enqueued to run on their own. Both steps are one script.
Only the leader's end lands a flight: a follower that is cancelled leaves the
set, and the others keep waiting for the leader.
"""

from __future__ import annotations

import functools
import json
import logging
import uuid
from dataclasses import asdict, dataclass
from typing import Any

import redis
from django.conf import settings
from redis.commands.core import Script

from apps.core.redis import redis_client

from .stats import cache_count

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CachedAnswer:
    output: str
    finish_reason: str
    input_tokens: int
    output_tokens: int
    usage_estimated: bool
    response_model: str
    created: str  # ISO 8601, when the answer was made
    tool_calls: list[dict[str, Any]] | None = None  # a tool-call answer's calls, replayed as they were
    refusal: str = ""
    logprobs: list[dict[str, Any]] | None = None
    choices: list[dict[str, Any]] | None = None  # n > 1: the choices after the first, as a job keeps them
    system_fingerprint: str = ""


def _check(key: str) -> str:
    if not key:
        raise ValueError("an exact-cache key is a request's SHA-256, never empty")
    return key


def _entry_key(schema: str, key: str) -> str:
    return f"aip:{{{schema}}}:cache:exact:{_check(key)}"


def _flight_key(schema: str, key: str) -> str:
    return f"aip:{{{schema}}}:cache:flight:{_check(key)}"


def _followers_key(schema: str, key: str) -> str:
    return f"aip:{{{schema}}}:cache:followers:{_check(key)}"


def index_key(schema: str) -> str:
    """The tenant's exact entries by expiry time (the per-tenant cap)."""
    return f"aip:{{{schema}}}:cache:exact-index"


@functools.cache
def cache_redis() -> redis.Redis:
    """The Valkey that holds exact-cache entries: CACHE_REDIS_URL, or the main
    client when it is the same server."""
    if settings.CACHE_REDIS_URL == settings.REDIS_URL:
        return redis_client()
    pool = redis.BlockingConnectionPool.from_url(
        settings.CACHE_REDIS_URL, max_connections=settings.REDIS_MAX_CONNECTIONS, timeout=10
    )
    return redis.Redis(connection_pool=pool)


# The cache never fails a request: when Redis cannot answer, a lookup is a miss,
# a write is skipped and a job leads its own flight (all logged).


def exact_get(*, schema: str, key: str, count: bool = True) -> CachedAnswer | None:
    """The entry, if any; `count`: counted as an exact hit or miss (the worker's
    second look counts only a hit). The counters are in the main Valkey: an
    evicting cache server must not lose them."""
    try:
        raw = cache_redis().get(_entry_key(schema, key))
    except redis.RedisError as exc:
        logger.warning("exact cache lookup failed, treated as a miss: %s", exc)
        raw = None
    if count:
        cache_count(schema=schema, field="exact_hit" if raw is not None else "exact_miss")
    if raw is None:
        return None
    return CachedAnswer(**json.loads(raw))


# KEYS: entry, the tenant's index. ARGV: value, ttl, the tenant's cap. Writes the
# entry, indexes it by expiry time, drops expired members, and beyond the cap
# deletes the entries that expire soonest. -> how many were dropped for the cap.
_PUT = """
local now = tonumber(redis.call('TIME')[1])
local ttl = tonumber(ARGV[2])
redis.call('SET', KEYS[1], ARGV[1], 'EX', ttl)
redis.call('ZADD', KEYS[2], now + ttl, KEYS[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
-- At most 1000 a write (a lowered cap is reached over a few writes).
local over = math.min(redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[3]), 1000)
if over > 0 then
  local oldest = redis.call('ZRANGE', KEYS[2], 0, over - 1)
  redis.call('DEL', unpack(oldest))
  redis.call('ZREMRANGEBYRANK', KEYS[2], 0, over - 1)
end
if redis.call('TTL', KEYS[2]) < ttl then redis.call('EXPIRE', KEYS[2], ttl) end
return math.max(over, 0)
"""


def exact_put(*, schema: str, key: str, answer: CachedAnswer, ttl: int, max_entries: int) -> None:
    """Store an answer, keeping the tenant at most `max_entries` entries."""
    value = json.dumps(asdict(answer), ensure_ascii=False)
    try:
        dropped = _script(_PUT, cache=True)(
            keys=[_entry_key(schema, key), index_key(schema)], args=[value, ttl, max_entries]
        )
    except redis.RedisError as exc:
        logger.warning("exact cache write skipped: %s", exc)
        return
    if dropped:
        logger.info("exact cache of %s is full (%d entries): dropped %d", schema, max_entries, dropped)


# KEYS: flight, followers. ARGV: job id, ttl. -> the leader's id (this job joined
# it as a follower), or false (this job leads).
_JOIN = """
local leader = redis.call('GET', KEYS[1])
if leader and leader ~= ARGV[1] then
  redis.call('SADD', KEYS[2], ARGV[1])
  redis.call('EXPIRE', KEYS[2], ARGV[2])
  return leader
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return false
"""

# KEYS: flight, followers. ARGV: a job id. Only the leader's end lands the flight:
# the leader (or, once its flight key has expired, a job that is no follower of
# it) ends the flight and takes every follower; a follower that ends (cancelled)
# only leaves the set, and the others keep waiting for their leader.
# -> follower ids (empty for anyone but the leader)
_LAND = """
local leader = redis.call('GET', KEYS[1])
if leader ~= ARGV[1] and (leader or redis.call('SISMEMBER', KEYS[2], ARGV[1]) == 1) then
  redis.call('SREM', KEYS[2], ARGV[1])
  return {}
end
if leader then redis.call('DEL', KEYS[1]) end
local followers = redis.call('SMEMBERS', KEYS[2])
redis.call('DEL', KEYS[2])
return followers
"""


@functools.cache
def _script(source: str, *, cache: bool = False) -> Script:
    return (cache_redis() if cache else redis_client()).register_script(source)


def flight_join(*, schema: str, key: str, job_id: uuid.UUID) -> uuid.UUID | None:
    """Lead the flight for `key` (None) or follow the job that leads it (its id)."""
    # A leader that died frees the key once no job could still be running (a model's
    # own deadline may be longer than the default).
    longest = max(settings.JOB_DEADLINE_SECONDS, settings.JOB_TIMEOUT_MAX_SECONDS)
    ttl = longest + settings.LLM_REQUEST_TIMEOUT_SECONDS + 60
    try:
        leader = _script(_JOIN)(keys=[_flight_key(schema, key), _followers_key(schema, key)], args=[str(job_id), ttl])
    except redis.RedisError as exc:
        logger.warning("single flight unavailable, the job runs on its own: %s", exc)
        return None
    return uuid.UUID(leader.decode()) if leader else None


def flight_land(*, schema: str, key: str, job_id: uuid.UUID) -> list[uuid.UUID]:
    """End the flight the job led; its followers, for the caller to complete or run.
    A follower calling it only leaves the flight (nothing comes back).
    (If Redis cannot say, they stay queued until the sweeper re-sends them.)"""
    try:
        followers: list[Any] = _script(_LAND)(
            keys=[_flight_key(schema, key), _followers_key(schema, key)], args=[str(job_id)]
        )
    except redis.RedisError as exc:
        logger.warning("single flight could not land; followers wait for the sweeper: %s", exc)
        return []
    return [uuid.UUID(f.decode()) for f in followers]


def flight_waiting(*, schema: str, key: str, job_id: uuid.UUID) -> bool:
    """Whether the job still follows the flight for `key`: False once its leader
    has landed it (and taken its followers) or it never followed. A follower that
    joined before its row was committed asks this after the commit: its leader may
    have landed in between without finding the row, and it then runs on its own.
    (Redis unavailable: False, the job runs on its own.)"""
    try:
        return bool(redis_client().sismember(_followers_key(schema, key), str(job_id)))
    except redis.RedisError as exc:
        logger.warning("single flight unavailable, the job runs on its own: %s", exc)
        return False
