"""Every job event stream expires, whatever ends its job: a stream whose closing
events never come (a job deleted mid-run, a failed final write, a worker lost)
still has a TTL from its first entry, refreshed while it grows, and shortened to
JOB_STREAM_TTL_SECONDS by its end."""

from __future__ import annotations

import uuid

import redis
from django.conf import settings

from apps.jobs.events import EventRelay, live_ttl_seconds, stream_key
from tests.support import Personas, job_until_final, wait_for


def _store() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL)


def test_a_stream_that_is_never_closed_still_expires(committed_personas: Personas):
    job_id = uuid.uuid4()
    relay = EventRelay(job_id=job_id, schema="acme")
    relay.delta("partial ")
    relay.flush()
    key = stream_key(schema="acme", job_id=job_id)
    ttl = _store().ttl(key)
    assert settings.JOB_STREAM_TTL_SECONDS < ttl <= live_ttl_seconds()
    relay.event({"type": "fallback", "from": "a", "to": "b", "reason": "x"})
    assert _store().ttl(key) > settings.JOB_STREAM_TTL_SECONDS  # refreshed, not shortened
    relay.final({"type": "done", "status": "succeeded", "finish_reason": "stop"})
    assert 0 < _store().ttl(key) <= settings.JOB_STREAM_TTL_SECONDS
    _store().delete(key)


def test_a_running_jobs_stream_has_a_ttl(worker, committed_personas: Personas, upstream):
    upstream.configure(chunk_delay_ms=150)
    client = committed_personas.alice.client()
    response = client.post(
        "/api/v1/jobs",
        {"model": "local-small", "messages": [{"role": "user", "content": "a long story please"}]},
        format="json",
    )
    job_id = response.json()["id"]
    key = stream_key(schema="acme", job_id=job_id)
    wait_for(lambda: _store().exists(key))
    assert _store().ttl(key) > settings.JOB_STREAM_TTL_SECONDS  # mid-run: the live expiry
    job_until_final(client, job_id)
    wait_for(lambda: 0 < _store().ttl(key) <= settings.JOB_STREAM_TTL_SECONDS)
