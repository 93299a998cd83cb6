"""The exact-match cache in Redis, and single flight for identical requests.

Keys live under the tenant's own prefix, `aip:{<schema>}:cache:...`, and the
hash itself covers the tenant (policy.exact_hash): no key of one tenant can name
another's entry. An entry is the answer as JSON (output, finish reason, usage,
the provider's model name, when it was made), expiring after its TTL.

Single flight: the first cacheable request for a key becomes its leader (its
job is enqueued); identical requests that arrive while it runs are stored as
jobs but not enqueued: they join the leader's follower set. When the leader
succeeds it writes the entry and then takes the followers (atomically: a request
arriving after that finds the entry), completing each with its answer. When it
fails, its followers are enqueued to run on their own. Both steps are one script.
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

from .stats import TTL_SECONDS as STATS_TTL_SECONDS
from .stats import stats_key, total_key

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


# The cache never fails a request: when Redis cannot answer, a lookup is a miss,
# a write is skipped and a job leads its own flight (all logged).


# KEYS: entry, the day's counters, the all-time counters. -> the entry (or nil),
# counted as a hit or miss.
_GET = """
local value = redis.call('GET', KEYS[1])
local field = value and 'exact_hit' or 'exact_miss'
redis.call('HINCRBY', KEYS[2], field, 1)
redis.call('EXPIRE', KEYS[2], ARGV[1])
redis.call('HINCRBY', KEYS[3], field, 1)
return value
"""


def exact_get(*, schema: str, key: str, count: bool = True) -> CachedAnswer | None:
    """The entry, if any; `count`: counted as an exact hit or miss in the same
    round trip (the worker's second look counts only a hit)."""
    try:
        if count:
            keys = [_entry_key(schema, key), stats_key(schema), total_key(schema)]
            raw = _script(_GET)(keys=keys, args=[STATS_TTL_SECONDS])
        else:
            raw = redis_client().get(_entry_key(schema, key))
    except redis.RedisError as exc:
        logger.warning("exact cache lookup failed, treated as a miss: %s", exc)
        return None
    if raw is None:
        return None
    return CachedAnswer(**json.loads(raw))


def exact_put(*, schema: str, key: str, answer: CachedAnswer, ttl: int) -> None:
    try:
        redis_client().set(_entry_key(schema, key), json.dumps(asdict(answer), ensure_ascii=False), ex=ttl)
    except redis.RedisError as exc:
        logger.warning("exact cache write skipped: %s", exc)


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

# KEYS: flight, followers. ARGV: the leader's job id. Ends the flight (if this job
# still leads it) and takes every follower. -> follower ids
_LAND = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
local followers = redis.call('SMEMBERS', KEYS[2])
redis.call('DEL', KEYS[2])
return followers
"""


@functools.cache
def _script(source: str) -> Script:
    return redis_client().register_script(source)


def flight_join(*, schema: str, key: str, job_id: uuid.UUID) -> uuid.UUID | None:
    """Lead the flight for `key` (None) or follow the job that leads it (its id)."""
    # A leader that died frees the key once no job could still be running.
    ttl = settings.JOB_DEADLINE_SECONDS + settings.LLM_REQUEST_TIMEOUT_SECONDS + 60
    try:
        leader = _script(_JOIN)(keys=[_flight_key(schema, key), _followers_key(schema, key)], args=[str(job_id), ttl])
    except redis.RedisError as exc:
        logger.warning("single flight unavailable, the job runs on its own: %s", exc)
        return None
    return uuid.UUID(leader.decode()) if leader else None


def flight_land(*, schema: str, key: str, job_id: uuid.UUID) -> list[uuid.UUID]:
    """End the flight the job led; its followers, for the caller to complete or run.
    (If Redis cannot say, they stay queued until the sweeper re-sends them.)"""
    try:
        followers: list[Any] = _script(_LAND)(
            keys=[_flight_key(schema, key), _followers_key(schema, key)], args=[str(job_id)]
        )
    except redis.RedisError as exc:
        logger.warning("single flight could not land; followers wait for the sweeper: %s", exc)
        return []
    return [uuid.UUID(f.decode()) for f in followers]
