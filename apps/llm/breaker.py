"""A circuit breaker per model, shared by every worker through Redis.

Closed: calls go through; calls and the failures that say the provider is in
trouble (5xx, 429, timeout, connection) are counted in a window of
BREAKER_WINDOW_SECONDS. At least BREAKER_FAILURES failures that are also at least
BREAKER_FAILURE_RATIO of the window's calls open the breaker for
BREAKER_COOLDOWN_SECONDS: the model is skipped at once, with no network call. (A
count alone would open on a busy model's ordinary error rate: 1% of 1,000 calls a
second is 10 failures a second.) After the cooldown it is half-open: one
caller at a time gets through as a probe (the others are still refused); the
probe's success closes the breaker, its failure opens it for another cooldown.
Every transition is one script on Redis's clock, so all workers see one state.

A call that failed because of the request itself (the provider answered 400, 413
or 422: a bad parameter, a prompt too long) says nothing about the model: it is
not counted at all, neither as a failure nor as a call of the window, and as a
half-open probe it neither closes nor reopens the breaker (it gives the probe
back). Otherwise one tenant could close a failing model's breaker for everyone
with bad requests, or keep it from reopening.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import redis
from django.conf import settings
from redis.commands.core import Script

from apps.core.redis import redis_client

logger = logging.getLogger(__name__)

# KEYS: state, probe. ARGV: cooldown. -> 1 closed, 2 half-open probe granted, 0 refused
_ALLOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local open_until = tonumber(redis.call('HGET', KEYS[1], 'open_until') or '0')
if open_until == 0 then return 1 end
if now < open_until then return 0 end
if redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[1]) then return 2 end
return 0
"""

# KEYS: state, probe. ARGV: ok (1/0), failures to open, window, cooldown, failure ratio.
# -> 'closed', 'counting', 'opened' (this failure opened it), 'open'
_RECORD = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local threshold, window, cooldown = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local ratio = tonumber(ARGV[5])
local open_until = tonumber(redis.call('HGET', KEYS[1], 'open_until') or '0')
if ARGV[1] == '1' and open_until > 0 then
  if now >= open_until then
    redis.call('DEL', KEYS[1], KEYS[2])
    return 'closed'
  end
  return 'open'
end
if ARGV[1] == '0' and open_until > 0 then
  if now >= open_until then
    -- the half-open probe failed: open again
    redis.call('HSET', KEYS[1], 'open_until', tostring(now + cooldown))
    redis.call('EXPIRE', KEYS[1], math.ceil(cooldown) + window + 60)
    redis.call('DEL', KEYS[2])
    return 'opened'
  end
  return 'open'
end
local state = redis.call('HMGET', KEYS[1], 'window_start', 'failures', 'calls')
local started, failures, calls = tonumber(state[1] or '0'), tonumber(state[2] or '0'), tonumber(state[3] or '0')
if now - started > window then started, failures, calls = now, 0, 0 end
calls = calls + 1
if ARGV[1] == '0' then failures = failures + 1 end
if ARGV[1] == '0' and failures >= threshold and failures >= ratio * calls then
  redis.call('HSET', KEYS[1], 'open_until', tostring(now + cooldown), 'failures', '0', 'calls', '0',
    'window_start', tostring(now))
  redis.call('EXPIRE', KEYS[1], math.ceil(cooldown) + window + 60)
  return 'opened'
end
redis.call('HSET', KEYS[1], 'failures', tostring(failures), 'calls', tostring(calls), 'window_start', tostring(started))
redis.call('EXPIRE', KEYS[1], math.ceil(window) + 60)
return 'counting'
"""


# KEYS: state, probe. A call that does not count ended: if it was the half-open
# probe, the next caller may probe.
_RELEASE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local open_until = tonumber(redis.call('HGET', KEYS[1], 'open_until') or '0')
if open_until > 0 and now >= open_until then redis.call('DEL', KEYS[2]) end
return 1
"""

# Provider statuses that mean the request was wrong, not the model.
REQUEST_ERROR_STATUSES = frozenset({400, 413, 422})


def _keys(model: str) -> list[str]:
    # One hash slot for both (a cluster runs the scripts): the slug is the tag.
    return [f"aip:cb:{{{model}}}", f"aip:cb:{{{model}}}:probe"]


@functools.cache
def _script(source: str) -> Script:
    return redis_client().register_script(source)


def breaker_allow(model: str) -> bool:
    """May a call to `model` go out now? (Redis down: yes; the breaker protects
    providers, it must not stop the platform.)"""
    try:
        return bool(_script(_ALLOW)(keys=_keys(model), args=[settings.BREAKER_COOLDOWN_SECONDS]))
    except redis.RedisError as exc:
        logger.warning("circuit breaker unavailable, allowing %s: %s", model, exc)
        return True


def breaker_record(model: str, *, ok: bool, status: int | None = None) -> None:
    """Count a call's outcome; `status` is the provider's HTTP status when it
    answered with an error (a request error is not counted, see above)."""
    if status in REQUEST_ERROR_STATUSES:
        try:
            _script(_RELEASE)(keys=_keys(model))
        except redis.RedisError as exc:
            logger.warning("circuit breaker probe not released for %s: %s", model, exc)
        return
    try:
        outcome = _script(_RECORD)(
            keys=_keys(model),
            args=[
                "1" if ok else "0",
                settings.BREAKER_FAILURES,
                settings.BREAKER_WINDOW_SECONDS,
                settings.BREAKER_COOLDOWN_SECONDS,
                settings.BREAKER_FAILURE_RATIO,
            ],
        )
    except redis.RedisError as exc:
        logger.warning("circuit breaker not updated for %s: %s", model, exc)
        return
    if outcome == b"opened":
        logger.warning(
            "circuit breaker for %s opened: skipped for %ss",
            model,
            settings.BREAKER_COOLDOWN_SECONDS,
            extra={"event": "breaker_opened", "model": model},
        )


@dataclass(frozen=True)
class BreakerState:
    state: str  # closed, open, half-open
    failures: int
    seconds_left: float  # until half-open, when open


def breaker_state(model: str) -> BreakerState:
    """For the operator admin: the model's breaker as it stands."""
    client = redis_client()
    seconds, micros = client.time()
    now = seconds + micros / 1_000_000
    raw = client.hgetall(_keys(model)[0])
    open_until = float(raw.get(b"open_until", 0) or 0)
    failures = int(raw.get(b"failures", 0) or 0)
    if not open_until:
        return BreakerState("closed", failures, 0.0)
    if now < open_until:
        return BreakerState("open", failures, round(open_until - now, 1))
    return BreakerState("half-open", failures, 0.0)
