"""Submit -> real Celery worker -> real HTTP upstream -> job row, end to end."""

from __future__ import annotations

import json
from typing import Any

import redis
from django.conf import settings
from django_tenants.utils import tenant_context

from apps.jobs.enqueue import job_enqueue
from apps.jobs.execute import job_execute
from apps.jobs.models import Job, JobStatus
from tests.support import Personas, job_until_final, wait_for


def _submit(client, **body):
    payload = {"model": "local-small", "messages": [{"role": "user", "content": "hello there"}], **body}
    response = client.post("/api/v1/jobs", payload, format="json")
    assert response.status_code == 202, response.content
    return response.json()


def test_job_runs_on_worker_and_stores_output_and_usage(worker, committed_personas: Personas, upstream):
    client = committed_personas.alice.client()
    job = _submit(client, max_tokens=50, metadata={"ticket": "T-1"})
    assert job["status"] == "queued"

    final = job_until_final(client, job["id"])

    assert final["status"] == "succeeded", final
    assert final["output"] == "Echo: hello there"
    assert final["finish_reason"] == "stop"
    assert final["usage"]["input_tokens"] > 0
    assert final["usage"]["output_tokens"] > 0
    assert final["usage"]["total_tokens"] == final["usage"]["input_tokens"] + final["usage"]["output_tokens"]
    assert final["usage"]["estimated"] is False
    assert final["provider_latency_ms"] is not None
    assert final["metadata"] == {"ticket": "T-1"}
    assert final["started_at"] and final["finished_at"]
    sent = upstream.stats()["last_bodies"][-1]
    assert sent["model"] == "local-small"
    assert sent["max_completion_tokens"] == 50  # OpenAI's name for it (the catalog row is provider openai)


def test_usage_is_counted_and_marked_estimated_when_provider_omits_it(worker, committed_personas: Personas, upstream):
    upstream.configure(stream_usage=False)  # like llama.cpp: no usage chunk in the stream
    client = committed_personas.alice.client()
    final = job_until_final(client, _submit(client)["id"])

    assert final["status"] == "succeeded"
    assert final["usage"]["estimated"] is True
    assert final["usage"]["input_tokens"] > 0
    assert final["usage"]["output_tokens"] > 0


def test_provider_error_fails_job_with_status_and_message_kept(worker, committed_personas: Personas, upstream):
    upstream.add_faults({"model": "local-small", "status": 500, "message": "upstream exploded"})
    client = committed_personas.alice.client()
    final = job_until_final(client, _submit(client)["id"])

    assert final["status"] == "failed"
    assert final["error"]["type"] == "provider_error"
    assert final["error"]["provider_status"] == 500
    assert "upstream exploded" in final["error"]["message"]
    assert final["usage"] is None


def test_job_lands_on_its_model_queue(committed_personas: Personas):
    """No worker consumes llm.routing-probe: the message stays in that Redis list."""
    queue = "llm.routing-probe"
    broker = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    broker.delete(queue)
    client = committed_personas.alice.client()

    job = _submit(client, model="routing-probe")

    messages = broker.lrange(queue, 0, -1)
    assert len(messages) == 1
    message = json.loads(messages[0])
    assert message["headers"]["task"] == "jobs.run"
    assert message["headers"]["id"] == job["id"]
    assert message["headers"]["_schema_name"] == "acme"
    broker.delete(queue)


def test_redelivered_task_does_not_call_provider_twice(worker, committed_personas: Personas, upstream):
    client = committed_personas.alice.client()
    job = _submit(client)
    # The same message delivered twice more, as a broker redelivery would.
    with tenant_context(committed_personas.alice.tenant):
        job_enqueue(job_id=job["id"], model="local-small")
        job_enqueue(job_id=job["id"], model="local-small")

    final = job_until_final(client, job["id"])
    assert final["status"] == "succeeded"
    # Give the duplicates time to be consumed, then count provider calls.
    wait_for(lambda: upstream.stats()["chat_per_model"].get("local-small", 0) >= 1)
    with tenant_context(committed_personas.alice.tenant):
        wait_for(lambda: _no_messages_left("llm.local-small"))
        assert upstream.stats()["chat_per_model"]["local-small"] == 1
        assert Job.objects.get(pk=job["id"]).attempts == 1
        # And running the finished job again directly does nothing.
        job_execute(job_id=Job.objects.get(pk=job["id"]).pk)
    assert upstream.stats()["chat_per_model"]["local-small"] == 1


def _no_messages_left(queue: str) -> bool:
    """Nothing of `queue` waits or is being run (unacked entries of other queues, a
    killed worker's in the chaos tests, are not this test's)."""
    broker = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    raw: Any = broker.hvals("unacked")
    unacked = [entry for entry in raw if json.loads(entry)[2] == queue]
    return broker.llen(queue) == 0 and not unacked


def test_job_cancelled_while_queued_is_never_run(committed_personas: Personas, worker, upstream):
    client = committed_personas.alice.client()
    job = _submit(client, model="routing-probe")  # no worker consumes this queue
    cancelled = client.post(f"/api/v1/jobs/{job['id']}/cancel").json()
    assert cancelled["status"] == "cancelled"
    with tenant_context(committed_personas.alice.tenant):
        job_execute(job_id=Job.objects.get(pk=job["id"]).pk)  # a late delivery
        assert Job.objects.get(pk=job["id"]).status == JobStatus.CANCELLED
    assert upstream.stats()["chat_per_model"].get("routing-probe", 0) == 0
    redis.Redis.from_url(settings.CELERY_BROKER_URL).delete("llm.routing-probe")
