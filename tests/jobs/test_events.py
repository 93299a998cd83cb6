"""Server-sent events relayed from the worker through Redis Streams."""

from __future__ import annotations

import redis
from django.conf import settings

from apps.jobs.events import stream_key
from tests.support import Personas, http_client, job_until_final, sse_events, wait_for

CHAT = {"model": "local-small", "messages": [{"role": "user", "content": "one two three four five six seven"}]}


def _submit(client, **body) -> str:
    response = client.post("/api/v1/jobs", json={**CHAT, **body})
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def _stream(client, job_id: str, *, limit: int | None = None, last_event_id: str | None = None):
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    with client.stream("GET", f"/api/v1/jobs/{job_id}/events", headers=headers) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-cache"
        assert response.headers["x-accel-buffering"] == "no"
        return sse_events(response, limit=limit)


def _text(events) -> str:
    return "".join(data["text"] for _, data in events if data["type"] == "delta")


def test_stream_delivers_deltas_usage_and_done_matching_the_stored_job(
    platform_server, worker, committed_personas: Personas, upstream
):
    upstream.configure(chunk_delay_ms=20)
    with http_client(platform_server, committed_personas.alice.key) as alice:
        job_id = _submit(alice)
        events = _stream(alice, job_id)
        job = alice.get(f"/api/v1/jobs/{job_id}").json()
    kinds = [data["type"] for _, data in events]
    assert kinds[-2:] == ["usage", "done"]
    assert kinds.count("delta") >= 2  # relayed as it streamed, not in one piece at the end
    assert _text(events) == job["output"] == "Echo: one two three four five six seven"
    assert events[-1][1] == {"type": "done", "status": "succeeded", "finish_reason": "stop"}
    assert events[-2][1]["output_tokens"] == job["usage"]["output_tokens"]
    ids = [tuple(map(int, event_id.split("-"))) for event_id, _ in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)


def test_reconnect_with_last_event_id_resumes_without_gap_or_duplicate(
    platform_server, worker, committed_personas: Personas, upstream
):
    upstream.configure(chunk_delay_ms=40)
    with http_client(platform_server, committed_personas.alice.key) as alice:
        job_id = _submit(alice)
        first = _stream(alice, job_id, limit=2)  # then the client drops
        rest = _stream(alice, job_id, last_event_id=first[-1][0])
        everything = _stream(alice, job_id)  # a fresh listener replays from the start
    assert first + rest == everything
    assert rest[-1][1]["type"] == "done"


def test_client_disconnect_leaves_the_job_running_to_success(
    platform_server, worker, committed_personas: Personas, upstream
):
    upstream.configure(chunk_delay_ms=40)
    with http_client(platform_server, committed_personas.alice.key) as alice:
        job_id = _submit(alice)
        assert len(_stream(alice, job_id, limit=1)) == 1
        final = job_until_final(committed_personas.alice.client(), job_id)
    assert final["status"] == "succeeded"
    assert final["output"] == "Echo: one two three four five six seven"


def test_other_tenants_job_stream_is_404_and_bad_input_is_rejected(
    platform_server, worker, committed_personas: Personas
):
    with http_client(platform_server, committed_personas.alice.key) as alice:
        job_id = _submit(alice)
        bad_id = alice.get(f"/api/v1/jobs/{job_id}/events", headers={"Last-Event-ID": "yesterday"})
        assert bad_id.status_code == 400
        assert bad_id.json()["error"]["param"] == "Last-Event-ID"
    with http_client(platform_server, committed_personas.carol.key) as carol:
        response = carol.get(f"/api/v1/jobs/{job_id}/events")
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "not_found"
    with http_client(platform_server, committed_personas.bob.key) as bob:
        assert bob.get(f"/api/v1/jobs/{job_id}/events").status_code == 404
    with http_client(platform_server, "aip_0000000000_nope") as stranger:
        assert stranger.get(f"/api/v1/jobs/{job_id}/events").status_code == 401


def test_expired_stream_is_served_from_postgres(platform_server, worker, committed_personas: Personas):
    with http_client(platform_server, committed_personas.alice.key) as alice:
        job_id = _submit(alice)
        final = job_until_final(committed_personas.alice.client(), job_id)
        store = redis.Redis.from_url(settings.REDIS_URL)
        key = stream_key(schema="acme", job_id=job_id)
        # The worker appends the closing events just after the job is final in Postgres.
        wait_for(lambda: any(b'"done"' in fields[b"d"] for _, fields in store.xrevrange(key, count=1)))  # type: ignore[index, union-attr]
        store.delete(key)
        events = _stream(alice, job_id)
    assert events == [
        ("0-1", {"type": "delta", "text": final["output"]}),
        (
            "0-2",
            {
                "type": "usage",
                "input_tokens": final["usage"]["input_tokens"],
                "output_tokens": final["usage"]["output_tokens"],
                "estimated": final["usage"]["estimated"],
            },
        ),
        ("0-3", {"type": "done", "status": "succeeded", "finish_reason": "stop"}),
    ]


def test_failed_job_ends_its_stream_with_an_error_event(
    platform_server, worker, committed_personas: Personas, upstream
):
    upstream.add_faults({"model": "local-small", "status": 500, "message": "upstream exploded"})
    with http_client(platform_server, committed_personas.alice.key) as alice:
        events = _stream(alice, _submit(alice))
    assert events[-1][1]["type"] == "error"
    assert events[-1][1]["provider_status"] == 500
    assert "upstream exploded" in events[-1][1]["message"]


def test_cancelled_queued_job_closes_its_stream(platform_server, committed_personas: Personas):
    with http_client(platform_server, committed_personas.alice.key) as alice:
        job_id = _submit(alice, model="routing-probe")  # no worker consumes this queue
        assert alice.post(f"/api/v1/jobs/{job_id}/cancel").status_code == 200
        events = _stream(alice, job_id)
    assert events[-1][1] == {"type": "done", "status": "cancelled", "finish_reason": None}
    redis.Redis.from_url(settings.REDIS_URL).delete("llm.routing-probe")


def test_stream_cut_midway_fails_the_job_instead_of_a_truncated_answer(
    platform_server, worker, committed_personas: Personas, upstream
):
    upstream.add_faults({"model": "local-small", "kind": "cut_stream", "after_chunks": 3})
    with http_client(platform_server, committed_personas.alice.key) as alice:
        job_id = _submit(alice)
        final = job_until_final(committed_personas.alice.client(), job_id)
        events = _stream(alice, job_id)
    assert final["status"] == "failed"
    assert final["error"]["type"] == "provider_stream_broken"
    assert events[-1][1]["type"] == "error"


def test_job_ended_without_a_closing_event_is_closed_from_postgres(
    platform_server, committed_personas: Personas, settings
):
    """A worker died mid-stream and the job was failed without an `error` entry:
    the listener gets the partial deltas, then the ending from Postgres, instead of
    heartbeats forever."""
    from django_tenants.utils import tenant_context

    from apps.jobs.events import EventRelay
    from apps.jobs.models import Job, JobStatus

    settings.SSE_HEARTBEAT_SECONDS = 1
    with tenant_context(committed_personas.alice.tenant):
        job = Job.objects.create(
            user_id=committed_personas.alice.user_id,
            model="local-small",
            messages=CHAT["messages"],
            status=JobStatus.RUNNING,
        )
        relay = EventRelay(job_id=job.pk)
        relay.delta("partial ")
        relay.flush()
        Job.objects.filter(pk=job.pk).update(status=JobStatus.FAILED, error_type="worker_lost", error_message="gone")
    with http_client(platform_server, committed_personas.alice.key) as alice:
        events = _stream(alice, str(job.pk))
    assert [data["type"] for _, data in events] == ["delta", "error"]
    assert events[0][1]["text"] == "partial "
    assert events[1][1]["error_type"] == "worker_lost"


def test_listeners_do_not_pin_database_connections(platform_server, committed_personas: Personas, settings):
    """More open streams than the connection pool holds (DB_POOL_MAX_SIZE=20 here):
    each listener returns its connection after authorizing, so all of them connect
    and all see the job end."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    listeners = settings.DATABASES["default"]["OPTIONS"]["pool"]["max_size"] + 10
    with http_client(platform_server, committed_personas.alice.key) as alice:
        job_id = _submit(alice, model="routing-probe")  # no worker: it waits until cancelled
        connected = threading.Semaphore(0)

        def listen() -> list:
            with (
                http_client(platform_server, committed_personas.alice.key, timeout=30) as client,
                client.stream("GET", f"/api/v1/jobs/{job_id}/events") as response,
            ):
                assert response.status_code == 200
                connected.release()
                return sse_events(response)

        with ThreadPoolExecutor(listeners) as pool:
            futures = [pool.submit(listen) for _ in range(listeners)]
            for _ in range(listeners):
                assert connected.acquire(timeout=20), "a listener could not connect"
            assert alice.post(f"/api/v1/jobs/{job_id}/cancel").status_code == 200
            results = [future.result(timeout=30) for future in futures]
    assert all(events[-1][1]["status"] == "cancelled" for events in results)
    redis.Redis.from_url(settings.REDIS_URL).delete("llm.routing-probe")
