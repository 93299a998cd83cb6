"""Helpers shared by tests (fixtures live in conftest.py)."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from django.conf import settings
from prometheus_client.parser import text_string_to_metric_families
from rest_framework.test import APIClient

from apps.tenants.models import Tenant
from devtools.run import expand, parse_procfile
from devtools.serve import ThreadedUvicorn, stop_process


@dataclass
class Persona:
    name: str
    email: str
    tenant: Tenant
    key: str
    user_id: int

    def client(self) -> APIClient:
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {self.key}")
        return client


@dataclass
class Personas:
    alice: Persona
    bob: Persona
    carol: Persona


def wait_for(predicate: Callable[[], Any], *, timeout: float = 15.0, interval: float = 0.05) -> Any:
    """Poll until predicate() is truthy; fail with a clear message on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


def job_until_final(client: APIClient | httpx.Client, job_id: str, *, timeout: float = 15.0) -> dict[str, Any]:
    def final() -> dict[str, Any] | None:
        body = client.get(f"/api/v1/jobs/{job_id}").json()
        return body if body["status"] in {"succeeded", "failed", "cancelled"} else None

    result: dict[str, Any] = wait_for(final, timeout=timeout)
    return result


def http_client(server: ThreadedUvicorn, key: str | None = None, **kwargs: Any) -> httpx.Client:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    kwargs.setdefault("timeout", 10)
    return httpx.Client(base_url=server.url, headers=headers, trust_env=False, **kwargs)


def sse_events(response: httpx.Response, *, limit: int | None = None) -> list[tuple[str, dict[str, Any]]]:
    """Read server-sent events (id, parsed data) until the server closes the stream
    or `limit` events have arrived. Comment lines (heartbeats) are skipped."""
    import json

    events: list[tuple[str, dict[str, Any]]] = []
    event_id, data = "", ""
    for line in response.iter_lines():
        if line.startswith(":"):
            continue
        if line.startswith("id: "):
            event_id = line[4:]
        elif line.startswith("data: "):
            data = line[6:]
        elif line == "" and data:
            events.append((event_id, json.loads(data)))
            event_id, data = "", ""
            if limit is not None and len(events) >= limit:
                break
    return events


async def read_body(receive: Any) -> bytes:
    """An ASGI request's whole body."""
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            return body


def worker_process_env(**extra: str) -> dict[str, str]:
    """The environment of a worker process started by a test (the Procfile's
    command): the test database and Valkey, this venv's executables first."""
    db = settings.DATABASES["default"]
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "aiplatform.settings.test",
        "DATABASE_URL": f"postgres://{db['USER']}:{db['PASSWORD']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        "REDIS_URL": settings.REDIS_URL,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        **extra,
    }


ROOT = Path(__file__).resolve().parent.parent


@contextlib.contextmanager
def procfile_process(name: str, env: dict[str, str], log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """The Procfile's `name` command as its own process, its output in `log_path`;
    stopped afterwards (if it still runs)."""
    command = expand(parse_procfile(ROOT / "Procfile")[name], env)
    with log_path.open("ab") as log:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            yield process
        finally:
            if process.poll() is None:
                stop_process(process, timeout=30)


@contextlib.contextmanager
def llm_worker_process(env: dict[str, str], log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """The Procfile's `worker-llm` command (the gevent pool production runs) as its
    own process, its output in `log_path`; stopped afterwards."""
    assert "gevent" in expand(parse_procfile(ROOT / "Procfile")["worker-llm"], env)
    with procfile_process("worker-llm", env, log_path) as process:
        yield process


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def metric_samples(text: str) -> Samples:
    """A Prometheus exposition as {(sample name, labels): value}."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def metric_value(samples: Samples, name: str, **labels: str) -> float:
    """The sum over the series of `name` whose labels include `labels`."""
    wanted = set(labels.items())
    return sum(v for (n, found), v in samples.items() if n == name and wanted <= found)


class Receiver:
    """An ASGI webhook receiver that records what it gets and can fail on purpose."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.fail_next = 0
        self.url = ""

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        body = await read_body(receive)
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        self.received.append({"headers": headers, "body": body})
        status = 500 if self.fail_next > 0 else 204
        self.fail_next -= 1
        await send({"type": "http.response.start", "status": status, "headers": [(b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})


def verify_webhook(secret: str, delivery: dict[str, Any]) -> dict[str, Any]:
    headers, body = delivery["headers"], delivery["body"]
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    key = base64.b64decode(secret.removeprefix("whsec_"))
    expected = "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    assert hmac.compare_digest(headers["webhook-signature"], expected)
    return json.loads(body)
