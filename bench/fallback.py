"""Benchmark for fallback chains (issue 7). Prints one JSON object.

The primary model fails 30% of its chat requests (500, seeded at the upstream);
the secondary is healthy. Jobs go through `POST /v1/chat/completions` (non-stream:
the request ends when the job does) at concurrency 8, with the fallback chain
primary -> secondary and, for comparison, with `"fallbacks": []` (retries only).
Reported: success rate, latency p50/p99, and the calls each model received.
Under this failure rate the primary's circuit breaker opens (an early run of
failures meets both its count and its ratio) and sends the jobs straight to the
secondary, or, without fallback, fails them at once; a third cell runs without
fallback on a platform whose breakers never open (retries alone).

    .venv/bin/python -m bench.fallback [--jobs 400]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
import urllib.request
from typing import Any

from bench.harness import HttpClient, Platform, latency_summary, platform

SETUP = """
from apps.catalog.models import LLMModel
from apps.controls.models import FallbackPolicy
local = LLMModel.objects.get(slug="local-small")
LLMModel.objects.update_or_create(slug="bench-primary", defaults={
    "base_url": local.base_url, "context_window": 8192, "max_output_tokens": 1024,
    "input_price_per_mtok": local.input_price_per_mtok, "output_price_per_mtok": local.output_price_per_mtok,
    "enabled": True})
FallbackPolicy.objects.filter(tier="standard").delete()
FallbackPolicy.objects.create(tier="standard", chain=["bench-primary", "local-small"])
"""

BODY = {"model": "bench-primary", "messages": [{"role": "user", "content": "Say hello in five words."}]}


def upstream(plat: Platform, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    url = f"http://127.0.0.1:{plat.upstream_port}/_control/{path}"
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return dict(json.loads(response.read()))


async def run(plat: Platform, body: dict[str, Any], *, jobs: int, concurrency: int) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {plat.api_key}"}
    latencies: list[float] = []
    failures: dict[int, int] = {}
    remaining = jobs

    async def loop() -> None:
        nonlocal remaining
        client = HttpClient(plat.web_port)
        try:
            while remaining > 0:
                remaining -= 1
                started = time.perf_counter()
                status, _ = await client.request("POST", "/v1/chat/completions", body, headers)
                if status == 200:
                    latencies.append(time.perf_counter() - started)
                else:
                    failures[status] = failures.get(status, 0) + 1
        finally:
            await client.close()

    await asyncio.gather(*(loop() for _ in range(concurrency)))
    return {
        "jobs": jobs,
        "succeeded": len(latencies),
        "success_rate": round(len(latencies) / jobs, 4),
        "failed_by_status": failures,
        **latency_summary(latencies),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    out: dict[str, Any] = {}
    without = {**BODY, "fallbacks": []}
    runs: tuple[tuple[str, dict[str, str], tuple[tuple[str, dict[str, Any]], ...]], ...] = (
        ("", {}, (("with_fallback", BODY), ("without_fallback", without))),
        # Without fallback again, with breakers that never open: what retries alone do.
        ("_breakers_off", {"BREAKER_FAILURES": "1000000"}, (("without_fallback", without),)),
    )
    for suffix, env, cells in runs:
        saved = {name: os.environ.get(name) for name in env}
        os.environ.update(env)
        try:
            with platform(llm_queues="llm.local-small,llm.bench-primary") as plat:
                plat.manage("shell", "-c", SETUP)
                time.sleep(6)  # catalog and policy caches
                for name, body in cells:
                    upstream(plat, "reset", {})
                    upstream(plat, "configure", {"error_rates": {"bench-primary": 0.3}})
                    redis_flush_breakers(plat)
                    cell = asyncio.run(run(plat, body, jobs=args.jobs, concurrency=args.concurrency))
                    stats = upstream(plat, "stats")
                    cell["upstream_calls"] = stats["chat_per_model"]
                    cell["injected_failures"] = stats["faults_triggered"]
                    out[name + suffix] = cell
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
    header = {"benchmark": "fallback", "machine": {"cpus": os.cpu_count()}, "primary_error_rate": 0.3}
    print(json.dumps({**header, **out}, indent=2))


def redis_flush_breakers(plat: Platform) -> None:
    """Each cell starts with the breakers closed."""
    import redis

    client = redis.Redis.from_url(plat.env["REDIS_URL"])
    for key in client.scan_iter(match="aip:cb:*"):
        client.delete(key)


if __name__ == "__main__":
    main()
