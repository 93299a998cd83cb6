"""Benchmark for rate limiting (issue 5). Prints one JSON object.

- Decisions per second against one Redis: the platform's token-bucket script over
  three buckets (user, tenant, model; every decision admitted, so it writes all
  three), from
    - one client, one decision at a time (p50/p99 per decision);
    - 32 threads of one process;
    - 4 processes pipelining 32 decisions per round trip (each decision its own
      atomic script call): what one Redis can decide when clients are not the
      bottleneck; with Valkey's own CPU time per decision (INFO cpu) and the rate
      that makes one Valkey core.
- POST /api/v1/jobs (LLM worker paused) without limits and with a user, a tenant
  and a model limit, alternated (off, on, off, on) at concurrency 1 (what the
  limiter adds to one request) and 32 (saturated: throughput and web CPU). On
  this 2-core machine web CPU per request at c=32 varies by 1-2 ms between runs
  of the same configuration (Postgres, Valkey and the load generator share the
  cores); the in-process cost of a 3-bucket decision with its headers, measured
  alone, is about 0.25 ms CPU.

    .venv/bin/python -m bench.ratelimit [--requests 2000] [--decisions 20000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any

import redis

from bench.harness import ROOT, Platform, latency_summary, platform
from bench.submission import submission_latency

LIMITS_ON = """
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

LIMITS_OFF = """
from django_tenants.utils import tenant_context
from apps.catalog.models import LLMModel
from apps.controls.models import RateLimit
from apps.ratelimit.models import UserRateLimit
from apps.tenants.models import Tenant
RateLimit.objects.all().delete()
LLMModel.objects.update(tokens_per_minute=None, requests_per_minute=None)
with tenant_context(Tenant.objects.get(schema_name="demo")):
    UserRateLimit.objects.all().delete()
"""


def client(plat: Platform, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "bench.ratelimit_client", *args],
        cwd=ROOT,
        env=plat.env,
        stdout=subprocess.PIPE,
        text=True,
    )


def result(process: subprocess.Popen[str]) -> dict[str, Any]:
    out, _ = process.communicate()
    if process.returncode:
        raise RuntimeError(f"bench.ratelimit_client failed ({process.returncode})")
    return dict(json.loads(out.strip().splitlines()[-1]))


def timed(data: dict[str, Any]) -> dict[str, Any]:
    latencies = data["latencies"]
    return {
        "decisions": len(latencies),
        "per_s": round(len(latencies) / data["elapsed"]),
        **{k: v for k, v in latency_summary(latencies).items() if k != "max_ms"},
    }


def valkey_cpu(conn: redis.Redis) -> float:
    info = conn.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def decisions(plat: Platform, total: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    out["single_client"] = timed(result(client(plat, "sequential", str(total // 4))))
    out["threads_32_one_process"] = timed(result(client(plat, "threads", "32", str(total))))
    conn = redis.Redis.from_url(plat.env["REDIS_URL"])
    seconds, processes, depth = 5.0, 4, 32
    start_at = time.time() + 3  # every client imported Django and warmed up by then
    running = [client(plat, "pipelined", str(seconds), str(depth), str(start_at)) for _ in range(processes)]
    time.sleep(max(0.0, start_at - time.time()))
    cpu_before = valkey_cpu(conn)
    counts = [result(p)["decisions"] for p in running]
    cpu = valkey_cpu(conn) - cpu_before
    total_decisions = sum(counts)
    out[f"processes_{processes}_pipelined_{depth}"] = {
        "decisions": total_decisions,
        "per_s": round(total_decisions / seconds),
        "valkey_cpu_us_per_decision": round(cpu * 1e6 / total_decisions, 2),
        "valkey_one_core_per_s": round(total_decisions / cpu) if cpu else None,
    }
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=2000, help="submissions per saturated cell")
    parser.add_argument("--decisions", type=int, default=20000)
    args = parser.parse_args()
    cells: dict[str, list[dict[str, Any]]] = {}
    with platform() as plat:
        measured = decisions(plat, args.decisions)
        for limits in ("off", "on", "off", "on"):
            plat.manage("shell", "-c", LIMITS_ON if limits == "on" else LIMITS_OFF)
            time.sleep(6)  # RATE_LIMIT_CACHE_SECONDS and CATALOG_CACHE_SECONDS
            for concurrency, requests in ((1, 500), (32, args.requests)):
                cell = submission_latency(plat, concurrency=concurrency, requests=requests)
                cells.setdefault(f"c{concurrency}_limits_{limits}", []).append(cell)

    def mean(name: str, key: str) -> float:
        return sum(cell[key] for cell in cells[name]) / len(cells[name])

    added = {
        f"c{c}": {
            key: round(mean(f"c{c}_limits_on", key) - mean(f"c{c}_limits_off", key), 3)
            for key in ("p50_ms", "p99_ms", "web_cpu_ms_per_request")
        }
        for c in (1, 32)
    }
    print(
        json.dumps(
            {
                "benchmark": "ratelimit",
                "machine": {"cpus": os.cpu_count()},
                "decisions_3_buckets": measured,
                "submission": cells,
                "added_by_3_limits_mean_of_2": added,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
