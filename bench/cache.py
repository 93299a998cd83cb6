"""Benchmark for caching (issue 6). Prints one JSON object.

- Exact hit, end to end: `POST /api/v1/jobs` whose 202 already carries the
  succeeded job (status, output, usage), and `POST /v1/chat/completions`
  (non-stream) answered from the cache: p50/p99 at concurrency 1, and the
  throughput at 32 with web CPU per request.
- For scale: the same POST with `cache.mode` "bypass" (enqueued for a worker,
  which is paused: the web tier's cost of a miss).

    .venv/bin/python -m bench.cache [--requests 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from typing import Any

import psutil

from bench.harness import HttpClient, Platform, cpu_seconds, latency_summary, platform
from bench.submission import wait_idle

BODY = {
    "model": "local-small",
    "messages": [{"role": "user", "content": "What is the capital of France?"}],
    "max_tokens": 16,
    "temperature": 0,
}


async def loop(plat: Platform, *, path: str, body: dict[str, Any], concurrency: int, requests: int) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {plat.api_key}"}
    latencies: list[float] = []
    errors = 0
    remaining = requests

    async def client_loop() -> None:
        nonlocal remaining, errors
        client = HttpClient(plat.web_port)
        try:
            while remaining > 0:
                remaining -= 1
                started = time.perf_counter()
                status, data = await client.request("POST", path, body, headers)
                ok = status == 200 if path.startswith("/v1/") else status == 202
                if ok and (path.startswith("/v1/") or data["status"] in ("succeeded", "queued")):
                    latencies.append(time.perf_counter() - started)
                else:
                    errors += 1
        finally:
            await client.close()

    cpu = cpu_seconds([plat.pid("web")])
    started = time.perf_counter()
    await asyncio.gather(*(client_loop() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    cpu = cpu_seconds([plat.pid("web")]) - cpu
    return {
        "concurrency": concurrency,
        "requests": requests,
        "errors": errors,
        "throughput_rps": round(len(latencies) / elapsed, 1),
        **latency_summary(latencies),
        "web_cpu_ms_per_request": round(cpu * 1000 / requests, 3),
    }


def cell(plat: Platform, **kwargs: Any) -> dict[str, Any]:
    asyncio.run(loop(plat, **{**kwargs, "requests": 100}))  # warm
    return asyncio.run(loop(plat, **kwargs))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=1000)
    args = parser.parse_args()
    n = args.requests
    with platform() as plat:
        # The first call fills the entry (a real provider call through the worker).
        status, job = asyncio.run(
            HttpClient(plat.web_port).request("POST", "/api/v1/jobs", BODY, {"Authorization": f"Bearer {plat.api_key}"})
        )
        assert status == 202, job
        wait_idle(plat)
        out: dict[str, Any] = {}
        out["exact_hit_jobs_api_c1"] = cell(plat, path="/api/v1/jobs", body=BODY, concurrency=1, requests=n)
        out["exact_hit_v1_chat_c1"] = cell(plat, path="/v1/chat/completions", body=BODY, concurrency=1, requests=n)
        out["exact_hit_jobs_api_c32"] = cell(plat, path="/api/v1/jobs", body=BODY, concurrency=32, requests=n * 2)
        worker = psutil.Process(plat.pid("worker-llm"))
        worker.suspend()
        try:
            bypass = {**BODY, "cache": {"mode": "bypass"}}
            out["miss_enqueue_jobs_api_c1"] = cell(plat, path="/api/v1/jobs", body=bypass, concurrency=1, requests=n)
        finally:
            worker.resume()
        wait_idle(plat)
    print(json.dumps({"benchmark": "cache", "machine": {"cpus": os.cpu_count()}, **out}, indent=2))


if __name__ == "__main__":
    main()
