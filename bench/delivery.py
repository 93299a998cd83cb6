"""Benchmark for delivery (issue 3): what the platform adds to a streamed and a
non-stream chat completion through /v1, next to calling the upstream directly with
the same chunk schedule. Uses ../shared/bench/loadgen.py (the load generator the
peers were measured with). Prints one JSON object.

    .venv/bin/python -m bench.delivery [--requests 500]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from typing import Any

import httpx

from bench.harness import ROOT, Platform, cpu_seconds, platform, rss_mb

LOADGEN = ROOT.parent / "shared" / "bench" / "loadgen.py"
# 20 content chunks, 5 ms apart: a short answer streamed at a provider-like pace.
REPLY = " ".join(f"word{i}" for i in range(20))
CHUNK_DELAY_MS = 5


def loadgen(base_url: str, auth: str, *, mode: str, concurrency: int, requests: int) -> dict[str, Any]:
    out = subprocess.run(
        [
            sys.executable,
            str(LOADGEN),
            "--base-url",
            base_url,
            "--model",
            "local-small",
            "--auth",
            auth,
            "--mode",
            mode,
            "-n",
            str(requests),
            "-c",
            str(concurrency),
            "--timeout",
            "120",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    result: dict[str, Any] = json.loads(out)
    return result


def cell(plat: Platform, *, mode: str, concurrency: int, requests: int) -> dict[str, Any]:
    upstream = f"http://127.0.0.1:{plat.upstream_port}/v1"
    direct = loadgen(upstream, "Bearer x", mode=mode, concurrency=concurrency, requests=requests)
    pids = [plat.pid("web"), plat.pid("worker-llm")]
    cpu = cpu_seconds(pids)
    ours = loadgen(
        f"http://127.0.0.1:{plat.web_port}/v1",
        f"Bearer {plat.api_key}",
        mode=mode,
        concurrency=concurrency,
        requests=requests,
    )
    cpu = cpu_seconds(pids) - cpu
    keys = ("p50", "p99")
    row: dict[str, Any] = {
        "mode": mode,
        "concurrency": concurrency,
        "requests": requests,
        "errors": ours["errors"],
        "platform_rps": ours["throughput_rps"],
        "direct_rps": direct["throughput_rps"],
        "total_ms": {k: ours["latency_ms"][k] for k in keys},
        "total_added_ms": {k: round(ours["latency_ms"][k] - direct["latency_ms"][k], 2) for k in keys},
        "platform_cpu_ms_per_request": round(cpu * 1000 / (requests + max(20, 4 * concurrency)), 2),
    }
    if mode == "stream":
        row["ttfc_ms"] = {k: ours["ttfc_ms"][k] for k in keys}
        row["ttfc_added_ms"] = {k: round(ours["ttfc_ms"][k] - direct["ttfc_ms"][k], 2) for k in keys}
    return row


def configure(plat: Platform, **settings: Any) -> None:
    httpx.post(f"http://127.0.0.1:{plat.upstream_port}/_control/configure", json=settings).raise_for_status()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=500)
    args = parser.parse_args()
    with platform() as plat:
        configure(plat, reply=REPLY, chunk_delay_ms=CHUNK_DELAY_MS)
        rows = [
            cell(plat, mode="stream", concurrency=1, requests=args.requests),
            cell(plat, mode="stream", concurrency=64, requests=args.requests * 2),
        ]
        # Non-stream: the upstream answers at once (the worker still streams from it).
        configure(plat, chunk_delay_ms=0)
        rows += [
            cell(plat, mode="chat", concurrency=1, requests=args.requests),
            cell(plat, mode="chat", concurrency=32, requests=args.requests * 2),
        ]
        rss = {"web": rss_mb(plat.pid("web")), "worker": rss_mb(plat.pid("worker-llm"))}
    print(
        json.dumps(
            {
                "benchmark": "delivery",
                "machine": {"cpus": os.cpu_count()},
                "upstream": {"chunks": 20, "chunk_delay_ms": CHUNK_DELAY_MS},
                "cells": rows,
                "rss_mb_after": rss,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
