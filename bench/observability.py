"""Benchmark for observability (issue 9): what tracing and metrics cost. Prints JSON.

The same platform twice, alternately, on the same machine and upstream:
- off: METRICS_ENABLED=false, OTEL_SDK_DISABLED=true (no SDK, no instrumentation);
- on:  metrics recorded, traces on with OTLP/HTTP export (batched) to a local
       collector stand-in that accepts and drops them, as an operator runs it.
For each: POST /api/v1/jobs -> 202 at concurrency 32 with the LLM worker paused
(the web tier alone: p50/p99 and web CPU per request), then jobs end to end at
concurrency 32 (web and worker CPU per job). Rounds alternate off/on to spread
drift across both.

    .venv/bin/python -m bench.observability [--requests 3000] [--jobs 1500] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from typing import Any

from bench.harness import DATADIR, free_port, platform, wait_port
from bench.submission import end_to_end, submission_latency

SINK = r"""
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Sink(BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass

ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Sink).serve_forever()
"""

MODES = {
    "off": {"METRICS_ENABLED": "false", "OTEL_SDK_DISABLED": "true"},
    "on": {"METRICS_ENABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"},
}


def measure(mode: str, *, requests: int, jobs: int, sink_port: int) -> dict[str, Any]:
    env = dict(MODES[mode])
    if mode == "on":
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"http://127.0.0.1:{sink_port}"
    with platform(extra_env=env) as plat:
        submit = submission_latency(plat, concurrency=32, requests=requests)
        e2e = end_to_end(plat, jobs=jobs, concurrency=32)
    errors = sum(
        (DATADIR / f"{name}.log").read_text(errors="replace").count("Traceback") for name in ("web", "worker-llm")
    )
    return {
        "errors_in_logs": errors,
        "submit_c32": {k: submit[k] for k in ("throughput_rps", "p50_ms", "p99_ms", "web_cpu_ms_per_request")},
        "end_to_end_c32": {
            "jobs_per_s": e2e["jobs_per_s"],
            "submit_to_done_ms": e2e["submit_to_done_ms"],
            "cpu_ms_per_job": {k: e2e["cpu_ms_per_job"][k] for k in ("web", "worker")},
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--jobs", type=int, default=1500)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    sink_port = free_port()
    sink = subprocess.Popen([sys.executable, "-c", SINK, str(sink_port)])
    try:
        wait_port(sink_port)
        runs: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
        for _ in range(args.rounds):
            for mode in ("off", "on"):
                runs[mode].append(measure(mode, requests=args.requests, jobs=args.jobs, sink_port=sink_port))
                time.sleep(1)
    finally:
        sink.terminate()

    def median(mode: str, *path: str) -> float:
        values = []
        for run in runs[mode]:
            value: Any = run
            for key in path:
                value = value[key]
            values.append(float(value))
        return round(statistics.median(values), 3)

    metrics = {
        "submit_p50_ms": ("submit_c32", "p50_ms"),
        "submit_p99_ms": ("submit_c32", "p99_ms"),
        "submit_rps": ("submit_c32", "throughput_rps"),
        "web_cpu_ms_per_request": ("submit_c32", "web_cpu_ms_per_request"),
        "e2e_jobs_per_s": ("end_to_end_c32", "jobs_per_s"),
        "worker_cpu_ms_per_job": ("end_to_end_c32", "cpu_ms_per_job", "worker"),
    }
    summary = {name: {"off": median("off", *path), "on": median("on", *path)} for name, path in metrics.items()}
    for values in summary.values():
        values["delta"] = round(values["on"] - values["off"], 3)
    print(
        json.dumps(
            {"benchmark": "observability overhead (median of rounds)", "summary": summary, "runs": runs}, indent=1
        )
    )


if __name__ == "__main__":
    main()
