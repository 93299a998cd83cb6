"""Which pool for LLM workers? End-to-end jobs/s and worker CPU per job for the
gevent pool, a thread pool and a prefork pool, with the upstream answering at once and after 200 ms
(a realistic provider is slower still). Prints one JSON object.

    .venv/bin/python -m bench.worker_pool [--jobs 600]
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from bench.harness import platform
from bench.submission import end_to_end

CELLS = [
    # (pool, concurrency): gevent as shipped; threads as before it; prefork with one
    # process per core (what a CPU-bound worker would use) and with more.
    ("gevent", 500),
    ("threads", 32),
    ("prefork", 2),
    ("prefork", 8),
]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=600)
    args = parser.parse_args()
    results: list[dict[str, Any]] = []
    for latency in (0, 200):
        for pool, concurrency in CELLS:
            with platform(llm_pool=pool, llm_concurrency=concurrency, upstream_latency_ms=latency) as plat:
                e2e = end_to_end(plat, jobs=args.jobs, concurrency=32)
            results.append(
                {
                    "upstream_latency_ms": latency,
                    "pool": pool,
                    "concurrency": concurrency,
                    "jobs_per_s": e2e["jobs_per_s"],
                    "worker_cpu_ms_per_job": e2e["cpu_ms_per_job"]["worker"],
                    "worker_rss_mb": e2e["rss_mb"]["worker"],
                    "succeeded": e2e["succeeded"],
                }
            )
    print(json.dumps({"benchmark": "worker_pool", "machine": {"cpus": os.cpu_count()}, "cells": results}, indent=2))


if __name__ == "__main__":
    main()
