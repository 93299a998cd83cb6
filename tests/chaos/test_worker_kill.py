"""SIGKILL an LLM worker while its jobs stream: another worker takes them over
within seconds, each starts over visibly, every listener's text equals the
stored answer, and every attempt that reached the provider is charged once."""

from __future__ import annotations

import threading
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import openai
import redis
from django.conf import settings
from django.db.models import Sum
from django_tenants.utils import tenant_context

from apps.billing.models import LedgerEntry, LedgerKind, UserBudget
from apps.billing.windows import counter_key, period_window
from apps.jobs.events import stream_key
from apps.jobs.models import Job
from tests.chaos.conftest import Listener, kill
from tests.support import Persona, Personas, http_client, job_until_final, llm_worker_process, wait_for

WORDS = " ".join(f"w{i}" for i in range(40))  # 42 pieces at 100 ms: a four-second stream


def _deltas(schema: str, job_id: str) -> int:
    entries: Any = redis.Redis.from_url(settings.REDIS_URL).xrange(stream_key(schema=schema, job_id=job_id))
    return sum(1 for _, fields in entries if b'"delta"' in fields[b"d"])


def _day_counter(persona: Persona) -> dict[str, int]:
    key = counter_key(
        schema=persona.tenant.schema_name, scope="user", user_id=persona.user_id, window=period_window("day")
    )
    raw: Any = redis.Redis.from_url(settings.REDIS_URL).hgetall(key)
    return {k.decode(): int(v) for k, v in raw.items()}


def test_a_killed_workers_jobs_are_taken_over_and_restart_visibly_and_charged_once(
    platform_server, housekeeping, chaos_env, committed_personas: Personas, upstream, tmp_path: Path
):
    alice = committed_personas.alice
    schema = alice.tenant.schema_name
    with tenant_context(alice.tenant):
        UserBudget.objects.create(user_id=alice.user_id, period="day", limit_usd=Decimal("10"))
    upstream.configure(chunk_delay_ms=100)
    sdk = openai.OpenAI(base_url=f"{platform_server.url}/v1", api_key=alice.key, max_retries=0, timeout=90)
    sdk_text: dict[int, str] = {}
    sdk_errors: list[BaseException] = []

    def sdk_stream(i: int) -> None:
        try:
            stream = sdk.chat.completions.create(
                model="pool-probe", messages=[{"role": "user", "content": f"sdk {i} {WORDS}"}], stream=True
            )
            sdk_text[i] = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
        except BaseException as exc:
            sdk_errors.append(exc)

    with http_client(platform_server, alice.key, timeout=30) as client:
        with llm_worker_process(chaos_env, tmp_path / "worker-a.log") as worker_a:
            job_ids = []
            for i in range(6):
                body = {"model": "pool-probe", "messages": [{"role": "user", "content": f"job {i} {WORDS}"}]}
                response = client.post("/api/v1/jobs", json={**body, "stream": True})
                assert response.status_code == 202, response.text
                job_ids.append(response.json()["id"])
            listeners = [Listener(platform_server.url, alice.key, job_id).start() for job_id in job_ids]
            sdk_threads = [threading.Thread(target=sdk_stream, args=(i,), daemon=True) for i in range(2)]
            for thread in sdk_threads:
                thread.start()
            # Every job mid-stream: a few deltas out, most of the answer still to come.
            with tenant_context(alice.tenant):
                wait_for(lambda: Job.objects.filter(user_id=alice.user_id).count() == 8, timeout=20)
                every = [str(pk) for pk in Job.objects.filter(user_id=alice.user_id).values_list("pk", flat=True)]
            wait_for(lambda: all(_deltas(schema, job_id) >= 3 for job_id in every), timeout=30)
            kill(worker_a)
            killed_at = time.monotonic()
        with llm_worker_process(chaos_env, tmp_path / "worker-b.log"):
            jobs = [job_until_final(client, job_id, timeout=60) for job_id in every]
            recovered = time.monotonic() - killed_at
            for listener in listeners:
                listener.join(timeout=30)
            for thread in sdk_threads:
                thread.join(timeout=30)

    print(f"\nchaos: 8 jobs re-run and finished {recovered:.1f} s after the worker's SIGKILL")
    assert [job["status"] for job in jobs] == ["succeeded"] * 8
    assert recovered < 30
    by_id = {job["id"]: job for job in jobs}
    with tenant_context(alice.tenant):
        rows = {str(job.pk): job for job in Job.objects.filter(pk__in=every)}
        assert {job.attempts for job in rows.values()} == {2}
        for job_id, job in rows.items():
            charges = list(LedgerEntry.objects.filter(job_id=job.pk, kind=LedgerKind.CHARGE).order_by("attempt"))
            # Attempt 1 reached the provider and streamed: charged from its stream; attempt 2 answered.
            assert [entry.attempt for entry in charges] == [1, 2], job_id
            assert charges[0].note == "worker lost mid-call (counted from its stream)"
            assert 3 <= charges[0].output_tokens < charges[1].output_tokens
            net = LedgerEntry.objects.filter(job_id=job.pk).aggregate(total=Sum("cost_micros"))["total"]
            assert net == job.cost_micros == sum(entry.cost_micros for entry in charges)
            lost = [entry for entry in job.attempt_log if entry["outcome"] == "lost"]
            assert [(entry["attempt"], entry["cost_micros"]) for entry in lost] == [(1, charges[0].cost_micros)]
        spent = LedgerEntry.objects.filter(user_id=alice.user_id).aggregate(total=Sum("cost_micros"))["total"]
    # The budget counters got every attempt's charge, and no hold is left.
    assert _day_counter(alice) == {"spent": spent, "reserved": 0}
    for listener in listeners:
        restarts = [event for event in listener.events if event["type"] == "restart"]
        assert restarts == [{"type": "restart", "attempt": 2}]
        assert listener.text() == by_id[listener.job_id]["output"]
        assert listener.events[-1]["type"] == "done"
    # The /v1 streams went on where the new attempt re-said what they had shown.
    assert not sdk_errors, sdk_errors
    assert sorted(sdk_text.values()) == sorted(by_id[job_id]["output"] for job_id in every if job_id not in job_ids)
    assert all(text.startswith("Echo: sdk ") for text in sdk_text.values())
    assert b"Traceback" not in (tmp_path / "worker-b.log").read_bytes(), (tmp_path / "worker-b.log").read_text()
