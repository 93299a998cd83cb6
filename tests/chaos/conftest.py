"""Chaos tests: the platform's real processes (the Procfile's gevent LLM worker,
its housekeeping worker and beat), killed, stopped and restarted while jobs
stream. Leases are short here (a second's heartbeat, a 4 s lease, a 1 s sweep)
so each test is bounded in seconds; bench/recovery.py measures the defaults."""

from __future__ import annotations

import asyncio
import json
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import procfile_process, worker_process_env

CHAOS_SETTINGS = {
    "JOB_LEASE_SECONDS": "4",
    "JOB_HEARTBEAT_SECONDS": "1",
    "JOB_LEASE_SWEEP_SECONDS": "1",
    "JOB_SHUTDOWN_GRACE_SECONDS": "2",
    "LLM_QUEUES": "llm.pool-probe",
    "LLM_WORKER_CONCURRENCY": "50",
    "CELERY_LOG_LEVEL": "WARNING",
}


@pytest.fixture
def chaos_env(tmp_path: Path) -> dict[str, str]:
    return worker_process_env(**CHAOS_SETTINGS, BEAT_SCHEDULE_FILE=str(tmp_path / "beat-schedule"))


@pytest.fixture
def housekeeping(platform, committed_db, chaos_env: dict[str, str], tmp_path: Path) -> Iterator[None]:
    """Beat and the default-queue worker: the lease sweep runs every second."""
    with (
        procfile_process("beat", chaos_env, tmp_path / "beat.log"),
        procfile_process("worker", chaos_env, tmp_path / "default-worker.log"),
    ):
        yield


@dataclass
class Listener:
    """One SSE listener of a job, in a thread of its own: every event it got."""

    url: str
    key: str
    job_id: str
    events: list[dict[str, Any]] = field(default_factory=list)
    error: BaseException | None = None
    thread: threading.Thread | None = None

    def start(self) -> Listener:
        self.thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self.thread.start()
        return self

    async def _run(self) -> None:
        try:
            async with (
                httpx.AsyncClient(base_url=self.url, timeout=90, trust_env=False) as client,
                client.stream(
                    "GET", f"/api/v1/jobs/{self.job_id}/events", headers={"Authorization": f"Bearer {self.key}"}
                ) as response,
            ):
                async for line in response.aiter_lines():
                    if line.startswith("data: "):
                        self.events.append(json.loads(line[6:]))
        except BaseException as exc:  # reported by the test
            self.error = exc

    def join(self, timeout: float) -> None:
        assert self.thread is not None
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"listener of {self.job_id} still open"
        assert self.error is None, self.error

    def text(self) -> str:
        """The answer as a listener assembles it: deltas, dropped at each `restart`."""
        text = ""
        for event in self.events:
            if event["type"] == "restart":
                text = ""
            elif event["type"] == "delta":
                text += event["text"]
        return text


def kill(process: subprocess.Popen[bytes]) -> None:
    process.kill()
    process.wait(timeout=10)
