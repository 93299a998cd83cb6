"""A production LLM worker process (the Procfile's command, gevent pool) with
every observability output switched on by environment, as an operator would:
OTLP traces to a collector, Sentry to a DSN, its own /metrics port, JSON logs.
The collector and Sentry are one local HTTP sink that keeps what it receives."""

from __future__ import annotations

import contextlib
import gzip
import json
import socket
import subprocess
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from django_tenants.utils import tenant_context
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from apps.jobs.enqueue import job_enqueue
from apps.jobs.models import Job
from devtools.serve import ThreadedUvicorn
from tests.conftest import SPANS
from tests.support import (
    Personas,
    Samples,
    job_until_final,
    llm_worker_process,
    metric_samples,
    metric_value,
    read_body,
    wait_for,
    worker_process_env,
)

ROOT = Path(__file__).resolve().parents[2]
PROMPT = "the worker must never send this anywhere"


class Sink:
    """Records every POST: Sentry envelopes and OTLP trace exports."""

    def __init__(self) -> None:
        self.posts: list[tuple[str, bytes]] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = await read_body(receive)
        headers = dict(scope["headers"])
        encoding = headers.get(b"content-encoding", b"")
        if encoding == b"gzip":
            body = gzip.decompress(body)
        elif encoding == b"deflate":
            body = zlib.decompress(body)
        self.posts.append((scope["path"], body))
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": b"{}"})

    def spans(self) -> list[Any]:
        found = []
        for path, body in self.posts:
            if path == "/v1/traces":
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                for resource in request.resource_spans:
                    for scoped in resource.scope_spans:
                        found.extend(scoped.spans)
        return found

    def sentry_events(self) -> list[dict[str, Any]]:
        events = []
        for path, body in self.posts:
            if path.endswith("/envelope/"):
                for line in body.split(b"\n"):
                    if line.startswith(b"{") and b'"exception"' in line:
                        events.append(json.loads(line))
        return events


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def sink() -> Iterator[tuple[Sink, ThreadedUvicorn]]:
    app = Sink()
    server = ThreadedUvicorn(app, name="collector-sink")
    server.start()
    yield app, server
    server.stop()


@contextlib.contextmanager
def _worker(sink: Sink, server: ThreadedUvicorn, tmp_path: Path, **extra: str) -> Iterator[dict[str, Any]]:
    port = server.url.rsplit(":", 1)[1]
    metrics_port = _free_port()
    env = worker_process_env(
        LLM_QUEUES="llm.pool-probe",
        LLM_WORKER_CONCURRENCY="20",
        CELERY_LOG_LEVEL="INFO",
        LOG_FORMAT="json",
        OTEL_EXPORTER_OTLP_ENDPOINT=server.url,
        OTEL_BSP_SCHEDULE_DELAY="100",
        SENTRY_DSN=f"http://public@127.0.0.1:{port}/1",
        WORKER_METRICS_PORT=str(metrics_port),
        **extra,
    )
    log_path = tmp_path / "worker.log"
    metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    with llm_worker_process(env, log_path):
        wait_for(lambda: _reachable(metrics_url), timeout=30)
        yield {"sink": sink, "metrics": metrics_url, "log": log_path}


@pytest.fixture
def observed_worker(platform, committed_db, sink, tmp_path: Path) -> Iterator[dict[str, Any]]:
    app, server = sink
    with _worker(app, server, tmp_path) as worker:
        yield worker


def _reachable(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1, trust_env=False).status_code == 200
    except httpx.HTTPError:
        return False


def _samples(url: str) -> Samples:
    return metric_samples(httpx.get(url, timeout=5, trust_env=False).text)


def test_the_worker_exports_traces_metrics_logs_and_errors(observed_worker, committed_personas: Personas):
    sink: Sink = observed_worker["sink"]
    alice = committed_personas.alice
    client = alice.client()
    body = {"model": "pool-probe", "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 16}
    job = job_until_final(client, client.post("/api/v1/jobs", body, format="json").json()["id"], timeout=30)
    assert job["status"] == "succeeded"

    # Traces: the worker's spans reach the collector, in the trace the web started
    # (its publish span was recorded here, in this process).
    (publish,) = [s for s in SPANS.get_finished_spans() if s.name == "apply_async/jobs.run"]
    exported = wait_for(lambda: [s for s in sink.spans() if s.name == "chat pool-probe"], timeout=20)
    attributes = {a.key: a.value for a in exported[0].attributes}
    assert attributes["aip.job_id"].string_value == job["id"]
    assert attributes["gen_ai.usage.output_tokens"].int_value == job["usage"]["output_tokens"]
    assert int.from_bytes(exported[0].trace_id, "big") == publish.context.trace_id
    # The task's span ends after the job (and leaves in a later batch).
    wait_for(lambda: {s.name for s in sink.spans()} >= {"run/jobs.run", "chat pool-probe"}, timeout=20)

    # Metrics: the worker's own port.
    # (the worker counts the job just after it is stored as succeeded)
    def counted() -> dict | None:
        now = _samples(observed_worker["metrics"])
        return now if metric_value(now, "aip_jobs_total", status="succeeded") else None

    samples = wait_for(counted)
    assert metric_value(samples, "gen_ai_client_token_usage_count", model="pool-probe", gen_ai_token_type="output") == 1
    assert metric_value(samples, "aip_cost_usd_total", tenant="acme", model="pool-probe") > 0
    assert metric_value(samples, "aip_jobs_total", status="succeeded") == 1
    assert ("aip_jobs_in_flight", frozenset({("model", "pool-probe")})) in samples

    # An error of ours: Sentry gets it with the job's tags and without the prompt.
    # A job no API would accept (a parameter the worker passes itself): the call
    # raises a TypeError in the worker, an error of ours, not the provider's.
    with tenant_context(alice.tenant):
        crash = Job.objects.create(
            user_id=alice.user_id,
            model="pool-probe",
            messages=[{"role": "user", "content": PROMPT}],
            params={"stream": 1},
        )
        job_enqueue(job_id=crash.pk, model="pool-probe")
    events = wait_for(lambda: sink.sentry_events(), timeout=20)
    event = events[0]
    assert event["tags"]["job_id"] == str(crash.pk)
    assert event["tags"]["tenant"] == "acme" and event["tags"]["model"] == "pool-probe"
    assert "TypeError" in json.dumps(event["exception"])
    assert all(PROMPT.encode() not in body for _, body in sink.posts)  # not in errors, not in spans

    # Logs: JSON lines, each of the job's naming it.
    def job_lines() -> list[dict[str, Any]]:
        lines = []
        for raw in observed_worker["log"].read_text().splitlines():
            if raw.startswith("{"):
                line = json.loads(raw)
                if line.get("job_id") == job["id"]:
                    lines.append(line)
        return lines

    lines = wait_for(job_lines)
    assert any("succeeded" in line["message"] for line in lines)
    assert all(line["tenant"] == "acme" and line["model"] == "pool-probe" for line in lines)
    assert PROMPT not in observed_worker["log"].read_text()


NO_SUBPROCESS = """
import django, subprocess
django.setup()
from apps.llm import providers

def refuse(*args, **kwargs):
    raise AssertionError(f"a subprocess was started: {args[0]!r}")

subprocess.Popen = refuse  # what gevent's fork would turn into a copy of every running job
client = providers.openai_client("http://127.0.0.1:9/v1", "not-needed", 5.0)
try:  # the first request too (headers, transport): nothing listens on port 9
    client.models.list()
except providers.openai.APIConnectionError:
    pass
print("ok")
"""


def test_building_a_provider_client_in_a_running_worker_starts_no_subprocess():
    """The first provider call of a worker builds its client and sends. httpx's transport
    import could run `ldconfig -p` (trio probing libpthread); in a gevent worker
    that fork copied the running jobs into the child, which used the parent's
    Postgres and Redis sockets (jobs were lost under a burst). Everything such an
    import needs is loaded at process start."""
    done = subprocess.run(
        [sys.executable, "-c", NO_SUBPROCESS],
        cwd=ROOT,
        env=worker_process_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().endswith("ok")
