"""Log lines carry the request's and the job's identity from the web into the
worker (Sentry's tags: tests/observability/test_worker_process.py)."""

from __future__ import annotations

import json
import logging
import threading
from typing import Any

import pytest

from apps.observability.logs import ContextFilter, JsonFormatter
from tests.support import Personas, http_client, job_until_final, wait_for

PROMPT = "my secret plans for the weekend"


class Lines(logging.Handler):
    """Every record as the production handler formats it, with the emitting thread."""

    def __init__(self) -> None:
        super().__init__()
        self.addFilter(ContextFilter())
        self.setFormatter(JsonFormatter())
        self.lines: list[tuple[str, dict[str, Any]]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append((threading.current_thread().name, json.loads(self.format(record))))


@pytest.fixture
def lines() -> Any:
    handler = Lines()
    root = logging.getLogger()
    root.addHandler(handler)
    yield handler
    root.removeHandler(handler)


def test_one_jobs_lines_share_its_job_id_in_the_web_and_the_worker(
    platform_server, worker, committed_personas: Personas, lines: Lines
):
    alice = committed_personas.alice
    body = {"model": "local-small", "messages": [{"role": "user", "content": PROMPT}]}
    with http_client(platform_server, alice.key) as client:
        created = client.post("/api/v1/jobs", json=body, headers={"X-Request-ID": "req-from-the-edge-42"})
        assert created.status_code == 202
        assert created.headers["x-request-id"] == "req-from-the-edge-42"
        job = job_until_final(client, created.json()["id"])
    wait_for(lambda: any("succeeded" in line["message"] for _, line in lines.lines if line.get("job_id") == job["id"]))

    mine = [(thread, line) for thread, line in lines.lines if line.get("job_id") == job["id"]]
    web = [line for thread, line in mine if "queued for" in line["message"]]
    worker_lines = [line for thread, line in mine if "started" in line["message"] or "succeeded" in line["message"]]
    assert web and len(worker_lines) >= 2
    web_threads = {thread for thread, line in mine if line in web}
    worker_threads = {thread for thread, line in mine if line in worker_lines}
    assert web_threads.isdisjoint(worker_threads)  # two processes' worth of threads, one job id
    for line in web + worker_lines:
        assert line["request_id"] == "req-from-the-edge-42"
        assert (line["tenant"], line["user"], line["model"]) == ("acme", alice.user_id, "local-small")
        assert line["level"] and line["logger"] and line["ts"]
    assert len({line["trace_id"] for line in web + worker_lines}) == 1  # and one trace
    assert all(PROMPT not in json.dumps(line) for _, line in lines.lines)


def test_a_plain_request_id_is_kept_and_anything_else_replaced(platform_server, committed_personas: Personas):
    with http_client(platform_server, committed_personas.alice.key) as client:
        generated = client.get("/api/v1/jobs", headers={"X-Request-ID": "bad id <script>"})
        assert generated.status_code == 200
        assert len(generated.headers["x-request-id"]) == 32 and generated.headers["x-request-id"].isalnum()
        assert client.get("/api/v1/jobs").headers["x-request-id"] != generated.headers["x-request-id"]
