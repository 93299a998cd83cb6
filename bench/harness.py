"""Shared benchmark plumbing: a private platform (embedded Postgres and Valkey in
.devdata/bench, the upstream, uvicorn and Celery workers as real processes, started
with the Procfile's commands), a small keep-alive HTTP client, percentiles, and CPU
accounting of process trees."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import psycopg
import redis

from devtools import embedded
from devtools.run import expand, parse_procfile

ROOT = Path(__file__).resolve().parent.parent
DATADIR = ROOT / ".devdata" / "bench"
SHARED_UPSTREAM = ROOT.parent / "shared" / "bench" / "upstream.py"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    pos = (len(ordered) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def latency_summary(seconds: list[float]) -> dict[str, float]:
    ms = [s * 1000 for s in seconds]
    return {
        "p50_ms": round(percentile(ms, 50), 3),
        "p90_ms": round(percentile(ms, 90), 3),
        "p99_ms": round(percentile(ms, 99), 3),
        "max_ms": round(max(ms), 3),
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on port {port} after {timeout}s")


def cpu_seconds(pids: list[int]) -> float:
    """User+system CPU of these processes and all their descendants."""
    total = 0.0
    for pid in pids:
        try:
            root = psutil.Process(pid)
            for proc in [root, *root.children(recursive=True)]:
                times = proc.cpu_times()
                total += times.user + times.system
        except psutil.NoSuchProcess:
            continue
    return total


def rss_mb(pid: int) -> float:
    root = psutil.Process(pid)
    return round(sum(p.memory_info().rss for p in [root, *root.children(recursive=True)]) / 2**20, 1)


@dataclass
class Platform:
    env: dict[str, str]
    web_port: int
    upstream_port: int
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    api_key: str = ""

    def start(self, name: str, argv: list[str], extra_env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        log = open(DATADIR / f"{name}.log", "wb")  # noqa: SIM115 (kept open for the process's life)
        process = subprocess.Popen(
            argv, cwd=ROOT, env={**self.env, **(extra_env or {})}, stdout=log, stderr=subprocess.STDOUT
        )
        self.processes[name] = process
        return process

    def manage(self, *args: str) -> str:
        done = subprocess.run(
            [sys.executable, "manage.py", *args], cwd=ROOT, env=self.env, capture_output=True, text=True
        )
        if done.returncode:
            raise RuntimeError(f"manage.py {args[0]} failed:\n{done.stderr[-3000:]}")
        return done.stdout

    def pid(self, name: str) -> int:
        return self.processes[name].pid

    def stop(self) -> None:
        for process in self.processes.values():
            process.terminate()
        for process in self.processes.values():
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()


@contextlib.contextmanager
def platform(
    *,
    llm_concurrency: int = 500,
    llm_pool: str = "gevent",
    upstream_latency_ms: int = 0,
    web_workers: int = 1,
    shared_upstream: dict[str, int] | None = None,
    llm_queues: str = "llm.local-small",
    extra_env: dict[str, str] | None = None,
) -> Iterator[Platform]:
    """A whole platform on private ports, torn down afterwards (the data dir stays).
    `shared_upstream` ({"chunks": 20, "chunk_delay_ms": 100}) serves local-small from
    ../shared/bench/upstream.py (the upstream the peers were measured on) instead of
    devtools.upstream."""
    DATADIR.mkdir(parents=True, exist_ok=True)
    services = embedded.start(DATADIR, pg_port=free_port(), redis_port=free_port(), dbname="bench")
    env = dict(os.environ)
    env.update(
        DATABASE_URL=services.database_url,
        REDIS_URL=services.redis_url,
        DJANGO_SETTINGS_MODULE="aiplatform.settings.dev",
        DEBUG="false",
        LOG_LEVEL="WARNING",
        CELERY_LOG_LEVEL="WARNING",
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        # The load comes from one key: the caps on its open streams (50 by default)
        # would measure refusals, not delivery.
        STREAMS_PER_KEY="100000",
        STREAMS_PER_TENANT="100000",
    )
    env.update(extra_env or {})
    plat = Platform(env=env, web_port=free_port(), upstream_port=free_port())
    try:
        if shared_upstream is None:
            upstream = [sys.executable, "-m", "devtools.upstream"]
        else:
            upstream = [sys.executable, str(SHARED_UPSTREAM)]
            upstream += [arg for k, v in shared_upstream.items() for arg in (f"--{k.replace('_', '-')}", str(v))]
        plat.start("upstream", [*upstream, "--port", str(plat.upstream_port), "--latency-ms", str(upstream_latency_ms)])
        plat.manage("migrate_schemas", "--noinput", "-v", "0")
        plat.manage("seed_demo", "--local-base-url", f"http://127.0.0.1:{plat.upstream_port}/v1")
        # The catalog may hold another run's upstream port: point local-small at this one.
        plat.manage(
            "shell",
            "-c",
            "from apps.catalog.models import LLMModel; "
            f"LLMModel.objects.filter(slug='local-small').update(base_url='http://127.0.0.1:{plat.upstream_port}/v1')",
        )
        # A run starts with no jobs, ledger entries, budgets or rate limits of earlier
        # runs (an interrupted run leaves jobs `running` that nobody will finish here).
        with psycopg.connect(services.database_url, autocommit=True) as conn:
            conn.execute(
                "TRUNCATE demo.jobs_job, demo.billing_userbudget, public.controls_tenantbudget,"
                " demo.ratelimit_userratelimit, public.controls_ratelimit, public.controls_fallbackpolicy,"
                " public.controls_cachepolicy, public.controls_killswitch, public.flags_flag, demo.flags_flag CASCADE"
            )
            conn.execute("UPDATE public.catalog_llmmodel SET tokens_per_minute = NULL, requests_per_minute = NULL")
        # Nor messages, breakers, buckets or cached answers (a bench may set up its own after this).
        redis.Redis.from_url(services.redis_url).flushall()
        plat.api_key = plat.manage("create_api_key", "--tenant", "demo", "--email", "bench@demo.test").split()[-1]
        procfile = parse_procfile(ROOT / "Procfile")
        proc_env = {
            **env,
            "PORT": str(plat.web_port),
            "WEB_CONCURRENCY": str(web_workers),
            "LLM_QUEUES": llm_queues,
            "LLM_WORKER_CONCURRENCY": str(llm_concurrency),
            "LLM_WORKER_POOL": llm_pool,
        }
        plat.start("web", expand(procfile["web"], proc_env))
        plat.start("worker-llm", expand(procfile["worker-llm"], proc_env))
        wait_port(plat.web_port)
        wait_port(plat.upstream_port)
        time.sleep(2)  # the worker connects to the broker
        yield plat
    finally:
        plat.stop()
        embedded.stop(DATADIR)


class HttpClient:
    """A minimal HTTP/1.1 keep-alive client on asyncio streams: the load generator's
    own CPU must stay small next to the system under test on a 2-core machine."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        assert self.reader is not None
        payload = json.dumps(body).encode() if body is not None else b""
        head = [f"{method} {path} HTTP/1.1", "Host: localhost", f"Content-Length: {len(payload)}"]
        if body is not None:
            head.append("Content-Type: application/json")
        head += [f"{k}: {v}" for k, v in (headers or {}).items()]
        self.writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + payload)
        status_line = await self.reader.readline()
        status = int(status_line.split()[1])
        length, chunked = 0, False
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b""):
                break
            name, _, value = line.decode().partition(":")
            if name.lower() == "content-length":
                length = int(value)
            elif name.lower() == "transfer-encoding" and "chunked" in value.lower():
                chunked = True
        if chunked:
            parts = []
            while size := int((await self.reader.readline()).split(b";")[0], 16):
                parts.append(await self.reader.readexactly(size))
                await self.reader.readline()
            await self.reader.readline()  # the empty trailer
            data = b"".join(parts)
        else:
            data = await self.reader.readexactly(length) if length else b""
        return status, json.loads(data) if data else None

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
