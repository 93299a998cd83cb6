"""Benchmark for delivery (issue 3): what the platform adds to streamed and
non-stream /v1/chat/completions, and how many streams one web process and one
worker process hold at once. Prints one JSON object.

Measured with the harness the peers are measured with (../shared/bench: its
upstream, load generator and matrix.py), so the figures line up with
`bash ../shared/bench/peers.sh all` (direct, LiteLLM, Portkey):

- latency matrix: upstreams at 0 ms and 50 ms to first byte, 20 chunks;
  modes chat and stream; concurrency 1, 8, 32, 64; `direct` (the upstream
  itself) and `aiplatform` (model `fake-{lat}ms` -> that upstream, through the
  web process, Redis, the gevent LLM worker and back). Medians over repeats; the
  figure is the added latency (platform minus direct) and the platform's CPU per
  request (web + worker).
- concurrency: --streams simultaneous streams of an upstream 2 s long (20 chunks
  100 ms apart), one web and one worker process: errors, streams/s, latency,
  time to first chunk, and the RSS of both processes.

Streams report both the time to the first SSE chunk (ttfc) and to the first
content token (ttft). The platform sends OpenAI's opening role chunk as soon as
the job is accepted, before the provider has answered, so its ttfc is the
submission time; ttft is the figure that includes the worker and the relay.

    .venv/bin/python -m bench.delivery [--requests 500] [--repeats 2] [--streams 1000]
    # next to the peers, in one sitting:
    bash ../shared/bench/peers.sh all && .venv/bin/python -m bench.delivery --peers /tmp/bench-run/results.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from bench.harness import DATADIR, ROOT, SHARED_UPSTREAM, Platform, cpu_seconds, free_port, platform, rss_mb, wait_port

SHARED = ROOT.parent / "shared" / "bench"
LATENCIES = (0, 50)
MODELS = {"fake-0ms": 0, "fake-50ms": 50, "fake-2s": None}


def _start_upstream(plat: Platform, name: str, *args: str) -> str:
    port = free_port()
    plat.start(name, [sys.executable, str(SHARED_UPSTREAM), "--port", str(port), *args])
    wait_port(port)
    return f"http://127.0.0.1:{port}/v1"


def _register_models(plat: Platform, base_urls: dict[str, str]) -> None:
    rows = ", ".join(f"({slug!r}, {url!r})" for slug, url in base_urls.items())
    plat.manage(
        "shell",
        "-c",
        "from apps.catalog.models import LLMModel\n"
        f"for slug, url in [{rows}]:\n"
        "    LLMModel.objects.update_or_create(slug=slug, defaults=dict(base_url=url, upstream_model='gpt-4o-mini',"
        " context_window=128000, max_output_tokens=4096, enabled=True))",
    )


def _matrix(out: Path, upstreams: dict[int, str], *, target: str, base_url: str, model: str, auth: str, args: Any,
            cpu_watch: dict[str, int] | None = None) -> None:  # fmt: skip
    command = [
        sys.executable,
        str(SHARED / "matrix.py"),
        "--target", target, "--base-url", base_url, "--model", model, "--auth", auth,
        "--modes", "chat,stream", "--concurrency", "1,8,32,64",
        "--requests", str(args.requests), "--requests-override", f"50:1={max(100, args.requests // 2)}",
        "--repeats", str(args.repeats), "--warmup", "100", "--out", str(out),
    ]  # fmt: skip
    for lat, url in upstreams.items():
        command += ["--upstream", f"{lat}={url}"]
    for name, pid in (cpu_watch or {}).items():
        command += ["--cpu-watch", f"{name}={pid}"]
    subprocess.run(command, check=True, capture_output=True, text=True)


def _loadgen(base_url: str, model: str, auth: str, *, concurrency: int, requests: int) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, str(SHARED / "loadgen.py"), "--base-url", base_url, "--model", model, "--auth", auth,
         "--mode", "stream", "-n", str(requests), "-c", str(concurrency), "--warmup", "0", "--timeout", "600"],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    result: dict[str, Any] = json.loads(out)
    return result


def summarize(lines: list[dict[str, Any]]) -> dict[str, Any]:
    """Per target, per cell (`<mode> <lat>ms c=<c>`): medians over repeats of p50/p99
    (and time to first chunk for streams), req/s, CPU ms per request; and for every
    target but `direct`, the added latency against `direct` from the same lines."""
    runs: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for line in lines:
        cell = f"{line['mode']} {int(line['upstream_latency_ms'])}ms c={line['concurrency']}"
        runs[(line["target"], cell)].append(line)
    table: dict[str, dict[str, Any]] = defaultdict(dict)
    for (target, cell), group in sorted(runs.items()):
        row: dict[str, Any] = {
            "p50_ms": round(statistics.median(r["latency_ms"]["p50"] for r in group), 2),
            "p99_ms": round(statistics.median(r["latency_ms"]["p99"] for r in group), 2),
            "rps": round(statistics.median(r["throughput_rps"] for r in group), 1),
            "errors": sum(r["errors"] for r in group),
        }
        for kind in ("ttfc", "ttft"):  # first SSE chunk; first content token
            if group[0].get(f"{kind}_ms"):
                row[f"{kind}_p50_ms"] = round(statistics.median(r[f"{kind}_ms"]["p50"] for r in group), 2)
                row[f"{kind}_p99_ms"] = round(statistics.median(r[f"{kind}_ms"]["p99"] for r in group), 2)
        cpu = [sum(v for k, v in r.get("cpu_ms_per_req", {}).items() if not k.startswith(("up", "loadgen")))
               for r in group]  # fmt: skip
        if any(cpu):
            row["cpu_ms_per_request"] = round(statistics.median(cpu), 2)
        table[target][cell] = row
    for target, cells in table.items():
        if target == "direct":
            continue
        for cell, row in cells.items():
            base = table.get("direct", {}).get(cell)
            if base is None:
                continue
            row["added_p50_ms"] = round(row["p50_ms"] - base["p50_ms"], 2)
            row["added_p99_ms"] = round(row["p99_ms"] - base["p99_ms"], 2)
            for kind in ("ttfc", "ttft"):
                if f"{kind}_p50_ms" in row and f"{kind}_p50_ms" in base:
                    row[f"added_{kind}_p50_ms"] = round(row[f"{kind}_p50_ms"] - base[f"{kind}_p50_ms"], 2)
                    row[f"added_{kind}_p99_ms"] = round(row[f"{kind}_p99_ms"] - base[f"{kind}_p99_ms"], 2)
    return dict(table)


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=500, help="requests per matrix cell and repeat")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--streams", type=int, default=1000, help="simultaneous 2 s streams")
    parser.add_argument("--peers", type=Path, help="peers.sh results.jsonl from the same sitting")
    args = parser.parse_args()
    out = DATADIR / "delivery.jsonl"
    queues = ",".join(f"llm.{slug}" for slug in MODELS)
    with platform(shared_upstream={"chunks": 20}, llm_queues=queues) as plat:
        upstreams = {0: f"http://127.0.0.1:{plat.upstream_port}/v1"}
        upstreams[50] = _start_upstream(plat, "upstream-50ms", "--latency-ms", "50", "--chunks", "20")
        slow = _start_upstream(plat, "upstream-2s", "--chunks", "20", "--chunk-delay-ms", "100")
        _register_models(plat, {"fake-0ms": upstreams[0], "fake-50ms": upstreams[50], "fake-2s": slow})
        pids = {"web": plat.pid("web"), "worker": plat.pid("worker-llm")}
        out.unlink(missing_ok=True)
        _matrix(out, upstreams, target="direct", base_url="{upstream}", model="gpt-4o-mini", auth="Bearer x", args=args)
        _matrix(out, upstreams, target="aiplatform", base_url=f"http://127.0.0.1:{plat.web_port}/v1",
                model="fake-{lat}ms", auth=f"Bearer {plat.api_key}", args=args, cpu_watch=pids)  # fmt: skip

        direct = _loadgen(slow, "gpt-4o-mini", "Bearer x", concurrency=args.streams, requests=args.streams)
        cpu = cpu_seconds(list(pids.values()))
        ours = _loadgen(f"http://127.0.0.1:{plat.web_port}/v1", "fake-2s", f"Bearer {plat.api_key}",
                        concurrency=args.streams, requests=args.streams)  # fmt: skip
        cpu = cpu_seconds(list(pids.values())) - cpu
        rss = {"web": rss_mb(pids["web"]), "worker": rss_mb(pids["worker"])}

    def brief(result: dict[str, Any]) -> dict[str, Any]:
        return {
            "errors": result["errors"],
            "error_kinds": result.get("error_kinds", {}),
            "streams_per_s": result["throughput_rps"],
            "latency_ms": {k: result["latency_ms"][k] for k in ("p50", "p99", "max")},
            "ttfc_ms": {k: result["ttfc_ms"][k] for k in ("p50", "p99", "max")},
            "ttft_ms": {k: result["ttft_ms"][k] for k in ("p50", "p99", "max")},
        }

    report: dict[str, Any] = {
        "benchmark": "delivery",
        "machine": {"cpus": os.cpu_count()},
        "upstream": "../shared/bench/upstream.py, 20 chunks",
        "matrix": summarize(_read_jsonl(out)),
        "concurrency": {
            "simultaneous_streams": args.streams,
            "upstream": "2 s per stream: 20 chunks 100 ms apart",
            "direct": brief(direct),
            "aiplatform": {
                **brief(ours),
                "cpu_ms_per_stream": round(cpu * 1000 / args.streams, 2),
                "rss_mb_after": rss,
            },
        },
    }
    if args.peers:
        report["peers"] = summarize(_read_jsonl(args.peers))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
