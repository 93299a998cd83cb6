"""SIGTERM an LLM worker while its jobs stream: it takes no new jobs, lets the
calls that end within the grace period finish, and hands the rest back at once
(another worker starts them over well before their leases would run out)."""

from __future__ import annotations

import time
from pathlib import Path

from django.db.models import Sum
from django_tenants.utils import tenant_context

from apps.billing.models import LedgerEntry, LedgerKind
from apps.jobs.models import Job
from tests.chaos.conftest import Listener
from tests.chaos.test_worker_kill import _deltas
from tests.support import Personas, http_client, job_until_final, llm_worker_process, wait_for


def test_sigterm_finishes_short_calls_and_hands_long_ones_back_at_once(
    platform_server, housekeeping, chaos_env, committed_personas: Personas, upstream, tmp_path: Path
):
    alice = committed_personas.alice
    schema = alice.tenant.schema_name
    # A long lease: a job handed back is taken over at once, not when its lease runs out.
    env = {**chaos_env, "JOB_LEASE_SECONDS": "60", "JOB_SHUTDOWN_GRACE_SECONDS": "2"}
    upstream.configure(chunk_delay_ms=100)
    short = " ".join(f"s{i}" for i in range(8))  # about a second
    long = " ".join(f"l{i}" for i in range(50))  # five seconds
    with (
        http_client(platform_server, alice.key, timeout=30) as client,
        llm_worker_process(env, tmp_path / "worker-a.log") as worker_a,
    ):
        job_ids = []
        for i, words in enumerate([short, long] * 3):
            body = {"model": "pool-probe", "messages": [{"role": "user", "content": f"job {i} {words}"}]}
            job_ids.append(client.post("/api/v1/jobs", json={**body, "stream": True}).json()["id"])
        listeners = [Listener(platform_server.url, alice.key, job_id).start() for job_id in job_ids]
        wait_for(lambda: all(_deltas(schema, job_id) >= 2 for job_id in job_ids), timeout=30)
        with llm_worker_process(env, tmp_path / "worker-b.log"):
            worker_a.terminate()
            stopped_at = time.monotonic()
            # Submitted while A shuts down: A takes it no more, B runs it once.
            late = client.post(
                "/api/v1/jobs", json={"model": "pool-probe", "messages": [{"role": "user", "content": "late"}]}
            ).json()["id"]
            worker_a.wait(timeout=20)
            exited = time.monotonic() - stopped_at
            jobs = [job_until_final(client, job_id, timeout=30) for job_id in [*job_ids, late]]
            done_at = time.monotonic() - stopped_at
            for listener in listeners:
                listener.join(timeout=20)
    print(f"\nchaos: SIGTERM'd worker exited after {exited:.1f} s; every job done {done_at:.1f} s after the signal")
    assert [job["status"] for job in jobs] == ["succeeded"] * 7
    assert 2 <= exited < 10  # the grace period, then the hand-back: not a lease's 60 s
    assert done_at < 20
    with tenant_context(alice.tenant):
        attempts = dict(Job.objects.filter(pk__in=job_ids).values_list("pk", "attempts"))
        for i, job_id in enumerate(job_ids):
            row = Job.objects.get(pk=job_id)
            charges = list(
                LedgerEntry.objects.filter(job_id=job_id, kind=LedgerKind.CHARGE).values_list("attempt", flat=True)
            )
            net = LedgerEntry.objects.filter(job_id=job_id).aggregate(total=Sum("cost_micros"))["total"]
            assert net == row.cost_micros
            if i % 2 == 0:  # short: finished within the grace period, on A
                assert (row.attempts, charges) == (1, [1]), job_id
            else:  # long: handed back, started over on B, its first try charged from its stream
                assert (row.attempts, sorted(charges)) == (2, [1, 2]), job_id
        assert Job.objects.get(pk=late).attempts == 1
    assert sorted(attempts.values()) == [1, 1, 1, 2, 2, 2]
    for listener, job in zip(listeners, jobs, strict=False):
        assert listener.text() == job["output"]
        restarts = [event for event in listener.events if event["type"] == "restart"]
        assert restarts == ([{"type": "restart", "attempt": 2}] if job["id"] in job_ids[1::2] else [])
    log = (tmp_path / "worker-a.log").read_text()
    assert "handed back" in log and "Traceback" not in log, log
