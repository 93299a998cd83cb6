"""Benchmark for money (issue 4): what budgets cost at admission. Prints one JSON
object.

- reservation + settlement: the two Lua scripts against Valkey from 32 threads of
  one process (as the web's thread pool and a worker would call them), operations
  per second and p50/p99 per operation;
- POST /api/v1/jobs at concurrency 32, the LLM worker paused, without budgets and
  then with four (the user's day and month, the tenant's day and month): the p50
  and p99 the reservation adds to a submission.

    .venv/bin/python -m bench.admission [--requests 2000] [--ops 20000]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

from bench.harness import platform
from bench.submission import submission_latency

BUDGETS = """
from decimal import Decimal
from django_tenants.utils import tenant_context
from apps.accounts.models import User
from apps.billing.models import UserBudget
from apps.controls.models import TenantBudget
from apps.tenants.models import Tenant
tenant = Tenant.objects.get(schema_name="demo")
for period in ("day", "month"):
    TenantBudget.objects.update_or_create(tenant=tenant, period=period, defaults={"limit_usd": Decimal("1000000")})
with tenant_context(tenant):
    user = User.objects.get(email="bench@demo.test")
    for period in ("day", "month"):
        UserBudget.objects.update_or_create(user=user, period=period, defaults={"limit_usd": Decimal("1000000")})
"""

OPS = """
import json, time, uuid
from concurrent.futures import ThreadPoolExecutor
from django.db import connection
from django_tenants.utils import tenant_context
from apps.accounts.models import User
from apps.accounts.selectors import Principal
from apps.billing.budgets import budget_reserve, budget_settle
from apps.tenants.models import Tenant
tenant = Tenant.objects.get(schema_name="demo")
with tenant_context(tenant):
    user = User.objects.get(email="bench@demo.test")
principal = Principal(tenant_schema="demo", user_id=user.pk, email=user.email, tier=user.tier, key_id=0, key_prefix="")
reserve, settle = [], []
def work(n):
    with tenant_context(tenant):
        for _ in range(n):
            job = uuid.uuid4()
            t0 = time.perf_counter()
            assert budget_reserve(principal=principal, job_id=job, amount_micros=1000)
            t1 = time.perf_counter()
            assert budget_settle(schema="demo", job_id=job, actual_micros=10)
            reserve.append(t1 - t0); settle.append(time.perf_counter() - t1)
            connection.close()  # back to the pool, as after each request (budgets are cached)
work(200)  # warm-up (scripts loaded, budgets cached)
reserve.clear(); settle.clear()
started = time.perf_counter()
with ThreadPoolExecutor(32) as pool:
    list(pool.map(work, [OPS_TOTAL // 32] * 32))
elapsed = time.perf_counter() - started
def pct(v, q):
    v = sorted(v); return round(v[min(len(v) - 1, int(len(v) * q))] * 1000, 3)
print(json.dumps({"concurrency": 32, "pairs": len(reserve), "ops_per_s": round(2 * len(reserve) / elapsed),
    "reserve_ms": {"p50": pct(reserve, .5), "p99": pct(reserve, .99)},
    "settle_ms": {"p50": pct(settle, .5), "p99": pct(settle, .99)}}))
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=2000, help="submissions per cell")
    parser.add_argument("--ops", type=int, default=20000, help="reserve+settle pairs")
    args = parser.parse_args()
    with platform() as plat:
        without = submission_latency(plat, concurrency=32, requests=args.requests)
        plat.manage("shell", "-c", BUDGETS)
        time.sleep(6)  # BUDGET_CACHE_SECONDS: every process now sees the budgets
        with_budgets = submission_latency(plat, concurrency=32, requests=args.requests)
        ops: dict[str, Any] = json.loads(
            plat.manage("shell", "-c", OPS.replace("OPS_TOTAL", str(args.ops))).strip().splitlines()[-1]
        )
    added = {k: round(with_budgets[k] - without[k], 3) for k in ("p50_ms", "p99_ms")}
    print(
        json.dumps(
            {
                "benchmark": "admission",
                "machine": {"cpus": os.cpu_count()},
                "reservation_and_settlement": ops,
                "submission_c32_without_budgets": without,
                "submission_c32_with_4_budgets": with_budgets,
                "added_by_budgets_ms": added,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
