"""Benchmark for rate limiting (issue 5). Prints one JSON object.

- decisions per second against one Redis: the token-bucket script over three
  buckets (user, tenant, model), from one client and from 32 threads of one
  process, with p50/p99 per decision;
- POST /api/v1/jobs at concurrency 32 (LLM worker paused) without limits and with
  a user, a tenant and a model limit: what the limiter adds at p50/p99.

    .venv/bin/python -m bench.ratelimit [--requests 2000] [--decisions 20000]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

from bench.harness import platform
from bench.submission import submission_latency

LIMITS = """
from django_tenants.utils import tenant_context
from apps.accounts.models import User
from apps.catalog.models import LLMModel
from apps.controls.models import RateLimit
from apps.ratelimit.models import UserRateLimit
from apps.tenants.models import Tenant
tenant = Tenant.objects.get(schema_name="demo")
RateLimit.objects.update_or_create(tenant=tenant, defaults={"tokens_per_minute": 10**9})
LLMModel.objects.filter(slug="local-small").update(tokens_per_minute=10**9)
with tenant_context(tenant):
    user = User.objects.get(email="bench@demo.test")
    UserRateLimit.objects.update_or_create(user=user, defaults={"tokens_per_minute": 10**9})
"""

DECISIONS = """
import json, time
from concurrent.futures import ThreadPoolExecutor
from apps.ratelimit.buckets import Bucket, buckets_take
buckets = [Bucket(f"aip:{{demo}}:rl:bench:{name}", 1e12, 1e9) for name in ("user", "tenant")]
buckets.append(Bucket("aip:rl:bench:model", 1e12, 1e9))
def run(n):
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        assert buckets_take(buckets, [1000] * 3).admitted
        out.append(time.perf_counter() - t0)
    return out
run(500)
def pct(v, q):
    v = sorted(v); return round(v[min(len(v) - 1, int(len(v) * q))] * 1000, 3)
result = {}
started = time.perf_counter(); one = run(TOTAL // 4); elapsed = time.perf_counter() - started
def summary(v, elapsed):
    return {"decisions": len(v), "per_s": round(len(v) / elapsed), "p50_ms": pct(v, .5), "p99_ms": pct(v, .99)}
result["single_client"] = summary(one, elapsed)
started = time.perf_counter()
with ThreadPoolExecutor(32) as pool:
    many = [x for part in pool.map(run, [TOTAL // 32] * 32) for x in part]
elapsed = time.perf_counter() - started
result["threads_32"] = summary(many, elapsed)
print(json.dumps(result))
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=2000, help="submissions per cell")
    parser.add_argument("--decisions", type=int, default=20000)
    args = parser.parse_args()
    with platform() as plat:
        decisions: dict[str, Any] = json.loads(
            plat.manage("shell", "-c", DECISIONS.replace("TOTAL", str(args.decisions))).strip().splitlines()[-1]
        )
        without = submission_latency(plat, concurrency=32, requests=args.requests)
        plat.manage("shell", "-c", LIMITS)
        time.sleep(6)  # RATE_LIMIT_CACHE_SECONDS and CATALOG_CACHE_SECONDS
        limited = submission_latency(plat, concurrency=32, requests=args.requests)
    print(
        json.dumps(
            {
                "benchmark": "ratelimit",
                "machine": {"cpus": os.cpu_count()},
                "decisions_3_buckets": decisions,
                "submission_c32_without_limits": without,
                "submission_c32_with_3_limits": limited,
                "added_by_limits_ms": {k: round(limited[k] - without[k], 3) for k in ("p50_ms", "p99_ms")},
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
