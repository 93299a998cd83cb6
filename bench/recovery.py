"""How fast jobs heal: seconds from an LLM worker's SIGKILL (mid-stream, a new
worker started at once) until its jobs run again (the new attempt's claim) and
until they have all finished, on the shipped defaults (15 s lease, 5 s heartbeat,
5 s lease sweep). Medians over several tries. Prints one JSON object.

    .venv/bin/python -m bench.recovery [--tries 5] [--jobs 6]

Goal (issue 20): a dead worker's jobs run again within 30 s.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import httpx
import psycopg

from bench.harness import DATADIR, ROOT, Platform, platform
from devtools.run import expand, parse_procfile

WORDS = " ".join(f"w{i}" for i in range(120))  # 122 pieces at 250 ms: a half-minute stream


def _jobs(plat: Platform, ids: list[str]) -> list[tuple[str, int, Any, Any]]:
    with psycopg.connect(plat.env["DATABASE_URL"], autocommit=True) as conn:
        rows = conn.execute(
            "SELECT status, attempts, started_at, finished_at FROM demo.jobs_job WHERE id = ANY(%s)", [ids]
        ).fetchall()
    return [(str(r[0]), int(r[1]), r[2], r[3]) for r in rows]


def _wait(what: str, check: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"recovery bench: {what} did not happen within {timeout:.0f} s")
        time.sleep(0.1)


def one_try(plat: Platform, client: httpx.Client, jobs: int) -> dict[str, float]:
    ids = []
    for i in range(jobs):
        body = {"model": "local-small", "messages": [{"role": "user", "content": f"try {time.time()} {i} {WORDS}"}]}
        response = client.post("/api/v1/jobs", json={**body, "stream": True})
        response.raise_for_status()
        ids.append(response.json()["id"])
    _wait("every job running", lambda: all(r[0] == "running" for r in _jobs(plat, ids)), 30)
    time.sleep(2)  # mid-stream: a couple of seconds of tokens out
    old = plat.processes["worker-llm"]
    old.kill()
    old.wait()
    killed = time.time()
    procfile = parse_procfile(ROOT / "Procfile")
    plat.start("worker-llm", expand(procfile["worker-llm"], {**plat.env, "LLM_QUEUES": "llm.local-small"}))
    _wait("every job's takeover", lambda: all(r[1] >= 2 for r in _jobs(plat, ids)), 120)
    rows = _jobs(plat, ids)
    ran_again = max(r[2].timestamp() for r in rows) - killed
    _wait("every job finished", lambda: all(r[0] in ("succeeded", "failed") for r in _jobs(plat, ids)), 180)
    rows = _jobs(plat, ids)
    assert all(r[0] == "succeeded" for r in rows), rows
    return {"ran_again_s": round(ran_again, 2), "finished_s": round(max(r[3].timestamp() for r in rows) - killed, 2)}


def summary(values: list[float]) -> dict[str, Any]:
    return {
        "median": round(statistics.median(values), 2),
        "min": round(min(values), 2),
        "max": round(max(values), 2),
        "all": values,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tries", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=6)
    args = parser.parse_args()
    with platform(llm_concurrency=100) as plat:
        procfile = parse_procfile(ROOT / "Procfile")
        env = {**plat.env, "BEAT_SCHEDULE_FILE": str(DATADIR / "celerybeat-schedule")}
        plat.start("beat", expand(procfile["beat"], env))
        plat.start("worker", expand(procfile["worker"], env))
        httpx.post(f"http://127.0.0.1:{plat.upstream_port}/_control/configure", json={"chunk_delay_ms": 250})
        headers = {"Authorization": f"Bearer {plat.api_key}"}
        with httpx.Client(base_url=f"http://127.0.0.1:{plat.web_port}", headers=headers, timeout=30) as client:
            tries = [one_try(plat, client, args.jobs) for _ in range(args.tries)]
    print(
        json.dumps(
            {
                "worker_sigkill": {
                    "jobs_per_try": args.jobs,
                    "tries": args.tries,
                    "ran_again_seconds": summary([t["ran_again_s"] for t in tries]),
                    "all_finished_seconds": summary([t["finished_s"] for t in tries]),
                    "goal_seconds": 30,
                    "settings": {"JOB_LEASE_SECONDS": 15, "JOB_HEARTBEAT_SECONDS": 5, "JOB_LEASE_SWEEP_SECONDS": 5},
                },
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
