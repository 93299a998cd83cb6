"""Growing a job's hold when one try of it was paid for and another must run.

A job whose worker died mid-call is started over by a new attempt. The lost
attempt's tokens were billed by the provider, and are charged (the job app
counts them from what its stream relayed); the new attempt may still cost up to
the whole hold. So before it runs, its hold grows by what the lost attempt cost
(`budget_extend`), checked against every budget like a hold at admission: a
budget with no room for another try refuses, and the job ends there rather than
overshoot it. The settlement at the end then moves the job's total (every
attempt's charges) into `spent`, which is never more than what was held.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from redis.commands.core import Script

from apps.core.redis import redis_client

from .budgets import _script, budgets_for
from .windows import counter_key, period_window, reservation_key

# KEYS: the reservation record, then its counters. ARGV: amount, the extension's
# tag (once per tag), then each counter's limit (-1: no budget applies any more).
# -> 1 extended (or nothing to extend: no hold, already settled, already done),
# 0 a budget has no room for it (nothing changed).
_EXTEND = """
local amount = tonumber(ARGV[1])
if redis.call('EXISTS', KEYS[1]) == 0 then return 1 end
local tag = 'extended:' .. ARGV[2]
if redis.call('HEXISTS', KEYS[1], tag) == 1 then return 1 end
for i = 2, #KEYS do
  local limit = tonumber(ARGV[1 + i])
  local state = redis.call('HMGET', KEYS[i], 'spent', 'reserved')
  if limit >= 0 and state[1] and tonumber(state[1]) + tonumber(state[2] or '0') + amount > limit then
    return 0
  end
end
for i = 2, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 then redis.call('HINCRBY', KEYS[i], 'reserved', amount) end
end
redis.call('HINCRBY', KEYS[1], 'amount', amount)
redis.call('HSET', KEYS[1], tag, 1)
return 1
"""


def _extend() -> Script:
    return _script(_EXTEND)


def budget_extend(*, schema: str, job_id: uuid.UUID, user_id: int, tier: str, amount_micros: int, tag: str) -> bool:
    """Grow the job's hold by `amount_micros` if every budget it is held against
    has room (exactly once per `tag`). False: one has not, nothing changed."""
    if amount_micros <= 0:
        return True
    record = reservation_key(schema=schema, job_id=job_id)
    found: Any = redis_client().hmget(record, ["counters", "at"])
    counters_raw, at_raw = found
    if not counters_raw:
        return True  # no hold (no budget applies), or settled already
    counters = counters_raw.decode().split()
    at = datetime.fromtimestamp(float(at_raw), tz=UTC) if at_raw else None
    limits: dict[str, int] = {}
    for budget in budgets_for(tenant_schema=schema, user_id=user_id, tier=tier):
        window = period_window(budget.period, at)
        limits[counter_key(schema=schema, scope=budget.scope, user_id=user_id, window=window)] = budget.limit_micros
    args: list[Any] = [amount_micros, tag, *(limits.get(counter, -1) for counter in counters)]
    return bool(_extend()(keys=[record, *counters], args=args))
