"""Helpers shared by tests (fixtures live in conftest.py)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
from rest_framework.test import APIClient

from apps.tenants.models import Tenant
from devtools.serve import ThreadedUvicorn


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
