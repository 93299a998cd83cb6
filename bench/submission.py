"""Benchmark for the foundation (issue 2). Prints one JSON object.

- submission latency: POST /api/v1/jobs -> 202, p50/p99 at concurrency 1 and 32
  (the LLM worker paused, so the web tier is measured alone);
- single-job latency: created -> running -> succeeded, one job at a time;
- end-to-end throughput: submit -> succeeded with the upstream at 0 ms, jobs/s;
- a bare Celery no-op task round trip on the same broker and machine (the ceiling);
- CPU milliseconds per job spent by the web and worker processes (and by Postgres
  and Valkey, reported apart).

    .venv/bin/python -m bench.submission [--jobs 2000] [--requests 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import psycopg

from bench.harness import DATADIR, HttpClient, Platform, cpu_seconds, latency_summary, percentile, platform, rss_mb

CHAT = {"model": "local-small", "messages": [{"role": "user", "content": "Say hello in five words."}], "max_tokens": 16}


def service_pids() -> dict[str, int]:
    pg = int((DATADIR / "postgres" / "data" / "postmaster.pid").read_text().split()[0])
    valkey = int((DATADIR / "valkey" / "valkey.pid").read_text().strip())
    return {"postgres": pg, "valkey": valkey}


async def closed_loop(plat: Platform, *, concurrency: int, requests: int) -> tuple[list[float], int, float]:
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
                status, _ = await client.request("POST", "/api/v1/jobs", CHAT, headers)
                if status == 202:
                    latencies.append(time.perf_counter() - started)
                else:
                    errors += 1
        finally:
            await client.close()

    started = time.perf_counter()
    await asyncio.gather(*(client_loop() for _ in range(concurrency)))
    return latencies, errors, time.perf_counter() - started


def submission_latency(plat: Platform, *, concurrency: int, requests: int) -> dict[str, Any]:
    """POST -> 202 with the LLM worker paused (SIGSTOP): the web tier alone, as when
    web and workers run on separate machines. Jobs wait in Redis meanwhile and are
    drained when the worker resumes."""
    asyncio.run(closed_loop(plat, concurrency=concurrency, requests=max(50, concurrency * 4)))  # warm-up
    wait_idle(plat)
    worker = psutil.Process(plat.pid("worker-llm"))
    worker.suspend()
    try:
        web_cpu = cpu_seconds([plat.pid("web")])
        latencies, errors, elapsed = asyncio.run(closed_loop(plat, concurrency=concurrency, requests=requests))
        web_cpu = cpu_seconds([plat.pid("web")]) - web_cpu
    finally:
        worker.resume()
    wait_idle(plat)
    return {
        "concurrency": concurrency,
        "requests": requests,
        "errors": errors,
        "throughput_rps": round(len(latencies) / elapsed, 1),
        **latency_summary(latencies),
        "web_cpu_ms_per_request": round(web_cpu * 1000 / requests, 3),
    }


def db(plat: Platform) -> psycopg.Connection[Any]:
    return psycopg.connect(plat.env["DATABASE_URL"], autocommit=True)


def wait_idle(plat: Platform, timeout: float = 300) -> None:
    """Until every job has left `queued`/`running` (the worker drained the queue)."""
    deadline = time.monotonic() + timeout
    with db(plat) as conn:
        while time.monotonic() < deadline:
            row = conn.execute("SELECT count(*) FROM demo.jobs_job WHERE status IN ('queued', 'running')").fetchone()
            if row is not None and row[0] == 0:
                return
            time.sleep(0.1)
    raise RuntimeError("jobs still pending")


def single_job_latency(plat: Platform, *, jobs: int) -> dict[str, Any]:
    """One job at a time, unsaturated: how long from POST to `running` (queue and
    worker pickup) and to `succeeded`, read from the job's own timestamps."""
    wait_idle(plat)
    with db(plat) as conn:
        conn.execute("TRUNCATE demo.jobs_job CASCADE")

    async def run() -> None:
        client = HttpClient(plat.web_port)
        headers = {"Authorization": f"Bearer {plat.api_key}"}
        try:
            for _ in range(jobs):
                status, body = await client.request("POST", "/api/v1/jobs", CHAT, headers)
                assert status == 202, body
                with db(plat) as conn:
                    while True:
                        row = conn.execute("SELECT status FROM demo.jobs_job WHERE id = %s", [body["id"]]).fetchone()
                        if row is not None and row[0] in ("succeeded", "failed"):
                            break
                        await asyncio.sleep(0.002)
        finally:
            await client.close()

    asyncio.run(run())
    with db(plat) as conn:
        rows = conn.execute(
            "SELECT extract(epoch FROM started_at - created_at), extract(epoch FROM finished_at - created_at),"
            " provider_latency_ms, status FROM demo.jobs_job"
        ).fetchall()
    pickup = [float(r[0]) for r in rows]
    done = [float(r[1]) for r in rows]
    return {
        "jobs": jobs,
        "succeeded": sum(1 for r in rows if r[3] == "succeeded"),
        "created_to_running": latency_summary(pickup),
        "created_to_succeeded": latency_summary(done),
        "provider_latency_ms_p50": percentile([float(r[2]) for r in rows], 50),
    }


def end_to_end(plat: Platform, *, jobs: int, concurrency: int) -> dict[str, Any]:
    wait_idle(plat)
    with db(plat) as conn:
        conn.execute("TRUNCATE demo.jobs_job CASCADE")
    pids = {"web": plat.pid("web"), "worker": plat.pid("worker-llm"), **service_pids()}
    before = {name: cpu_seconds([pid]) for name, pid in pids.items()}
    latencies, errors, submit_elapsed = asyncio.run(closed_loop(plat, concurrency=concurrency, requests=jobs))
    wait_idle(plat)
    after = {name: cpu_seconds([pid]) for name, pid in pids.items()}
    with db(plat) as conn:
        row = conn.execute(
            "SELECT count(*) FILTER (WHERE status = 'succeeded'), min(created_at), max(finished_at),"
            " percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM started_at - created_at)),"
            " percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM started_at - created_at)),"
            " percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM finished_at - created_at)),"
            " percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM finished_at - created_at))"
            " FROM demo.jobs_job"
        ).fetchone()
    assert row is not None
    succeeded, first, last, pick50, pick99, e2e50, e2e99 = row
    elapsed = (last - first).total_seconds()
    cpu_ms = {name: round((after[name] - before[name]) * 1000 / jobs, 3) for name in pids}
    return {
        "jobs": jobs,
        "concurrency": concurrency,
        "succeeded": succeeded,
        "submit_errors": errors,
        "jobs_per_s": round(succeeded / elapsed, 1),
        "submit_rps": round(len(latencies) / submit_elapsed, 1),
        "pickup_ms": {"p50": round(float(pick50) * 1000, 2), "p99": round(float(pick99) * 1000, 2)},
        "submit_to_done_ms": {"p50": round(float(e2e50) * 1000, 2), "p99": round(float(e2e99) * 1000, 2)},
        "cpu_ms_per_job": {**cpu_ms, "platform (web+worker)": round(cpu_ms["web"] + cpu_ms["worker"], 3)},
        "rss_mb": {"web": rss_mb(plat.pid("web")), "worker": rss_mb(plat.pid("worker-llm"))},
    }


def celery_noop(plat: Platform, *, tasks: int, concurrency: int) -> dict[str, Any]:
    """Round trips of a no-op task: producer -> broker -> thread-pool worker -> result."""
    env = {**plat.env, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "bench.noop_app",
            "worker",
            "-Q",
            "noop",
            "-P",
            "threads",
            "-c",
            str(concurrency),
            "--without-mingle",
            "--without-gossip",
            "-l",
            "WARNING",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        os.environ["REDIS_URL"] = plat.env["REDIS_URL"]
        from bench.noop_app import noop

        time.sleep(3)
        for result in [noop.delay() for _ in range(100)]:  # warm-up
            result.get(timeout=60)
        cpu_before = cpu_seconds([worker.pid])
        started = time.perf_counter()
        results = [noop.delay() for _ in range(tasks)]
        for result in results:
            result.get(timeout=120)
        elapsed = time.perf_counter() - started
        cpu = cpu_seconds([worker.pid]) - cpu_before
        return {
            "tasks": tasks,
            "worker_concurrency": concurrency,
            "tasks_per_s": round(tasks / elapsed, 1),
            "worker_cpu_ms_per_task": round(cpu * 1000 / tasks, 3),
        }
    finally:
        worker.terminate()
        worker.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=2000, help="submissions per latency cell")
    parser.add_argument("--jobs", type=int, default=2000, help="jobs in the end-to-end run")
    parser.add_argument("--llm-concurrency", type=int, default=32)
    args = parser.parse_args()
    with platform(llm_concurrency=args.llm_concurrency) as plat:
        result: dict[str, Any] = {
            "benchmark": "submission",
            "machine": {"cpus": os.cpu_count()},
            "submission_latency": [
                submission_latency(plat, concurrency=1, requests=args.requests // 2),
                submission_latency(plat, concurrency=32, requests=args.requests),
            ],
            "single_job_latency": single_job_latency(plat, jobs=200),
            "end_to_end": end_to_end(plat, jobs=args.jobs, concurrency=32),
            "celery_noop_round_trip": celery_noop(plat, tasks=args.jobs, concurrency=args.llm_concurrency),
        }
    e2e, noop = result["end_to_end"], result["celery_noop_round_trip"]
    result["jobs_vs_noop_ratio"] = round(e2e["jobs_per_s"] / noop["tasks_per_s"], 3)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
