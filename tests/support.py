"""Helpers shared by tests (fixtures live in conftest.py)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rest_framework.test import APIClient

from apps.tenants.models import Tenant


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


def job_until_final(client: APIClient, job_id: str, *, timeout: float = 15.0) -> dict[str, Any]:
    def final() -> dict[str, Any] | None:
        body = client.get(f"/api/v1/jobs/{job_id}").json()
        return body if body["status"] in {"succeeded", "failed", "cancelled"} else None

    result: dict[str, Any] = wait_for(final, timeout=timeout)
    return result
