"""The HTTP edge against a hostile user: stream positions, unrouted stream paths,
request bodies, and caps on long-lived connections. Real Valkey, real Postgres,
the real ASGI app under uvicorn."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import redis
import redis.asyncio as aioredis
from django.conf import settings
from django_tenants.utils import tenant_context

from apps.accounts.keys import parse_key
from apps.accounts.models import ApiKey
from apps.accounts.services import api_key_revoke
from apps.jobs.hub import StreamHub
from devtools.serve import ThreadedUvicorn
from tests.support import Persona, Personas, http_client, sse_events, wait_for

HUGE = "99999999999999999999"  # above 2^64 - 1: Valkey refuses it in an XREAD
# routing-probe's queue has no worker in these tests: its jobs wait, so their
# streams stay open until the test cancels them.
HELD = {"model": "routing-probe", "messages": [{"role": "user", "content": "hold the line"}]}


def _key() -> str:
    return f"aip:hubtest:job:{uuid.uuid4()}"


def _sid(entry_id: bytes | str) -> str:
    return entry_id.decode() if isinstance(entry_id, bytes) else entry_id


async def _next(listener: Any, timeout: float = 10) -> Any:
    async with asyncio.timeout(timeout):
        return await listener.queue.get()


# --- a bad stream position ends its own listener only


@pytest.mark.parametrize("bad", [f"{HUGE}-0", f"0-{HUGE}"])
def test_a_position_redis_refuses_fails_its_listener_only(bad: str):
    """Validation bypassed (the hub is given the position directly): the shared
    XREAD is refused, yet only the hostile listener fails, whether it follows a
    stream of its own or the victim's; the victim's stream carries on. (On the
    victim's stream, `<huge>-0` is past the victim, so the stream is read from the
    victim's position and nothing is refused: the hostile listener just waits.)"""

    async def scenario() -> None:
        hub = StreamHub(settings.REDIS_URL)
        writer = aioredis.Redis.from_url(settings.REDIS_URL)
        victim_key, hostile_key = _key(), _key()
        first = _sid(await writer.xadd(victim_key, {"d": "before"}))
        async with hub.listen(victim_key, "0-0") as victim:
            assert await _next(victim) == (first, b"before")
            for key in (hostile_key, victim_key):
                async with hub.listen(key, bad) as hostile:
                    if key == hostile_key or bad.startswith("0-"):
                        failure = await _next(hostile)
                        assert isinstance(failure, redis.ResponseError), failure
                later = _sid(await writer.xadd(victim_key, {"d": f"after {key}"}))
                assert await _next(victim) == (later, f"after {key}".encode())
            assert victim.queue.empty()
        await hub.close()
        await writer.delete(victim_key, hostile_key)
        await writer.aclose()

    asyncio.run(scenario())


def _submit(client: httpx.Client, body: dict[str, Any] = HELD) -> str:
    response = client.post("/api/v1/jobs", json=body)
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


@pytest.fixture
def held(committed_db: None) -> Iterator[None]:
    """Jobs on routing-probe stay queued; their broker messages and the stream
    slots are cleared afterwards."""
    client = redis.Redis.from_url(settings.REDIS_URL)

    def clean() -> None:
        client.delete("llm.routing-probe")
        for key in client.scan_iter(match="aip:{*}:streams:*"):
            client.delete(key)

    clean()
    yield
    clean()


def test_an_event_id_above_2_64_is_a_400_naming_the_parameter_and_cuts_no_other_stream(
    platform_server, held, committed_personas: Personas
):
    with (
        http_client(platform_server, committed_personas.alice.key) as alice,
        http_client(platform_server, committed_personas.carol.key, timeout=30) as carol,
    ):
        carol_job = _submit(carol)
        alice_job = _submit(alice)
        with carol.stream("GET", f"/api/v1/jobs/{carol_job}/events") as live:
            assert live.status_code == 200
            for headers, params, param in (
                ({"Last-Event-ID": f"{HUGE}-0"}, {}, "Last-Event-ID"),
                ({}, {"after": f"1-{HUGE}"}, "after"),
                ({}, {"after": "18446744073709551616-0"}, "after"),  # 2^64 exactly
            ):
                refused = alice.get(f"/api/v1/jobs/{alice_job}/events", headers=headers, params=params)
                assert refused.status_code == 400, refused.text
                error = refused.json()["error"]
                assert (error["code"], error["param"]) == ("invalid_event_id", param)
                assert param in error["message"]
            # The largest valid id is still accepted (and the stream it starts is live).
            with alice.stream("GET", f"/api/v1/jobs/{alice_job}/events", params={"after": "18446744073709551615-0"}):
                pass
            assert alice.post(f"/api/v1/jobs/{carol_job}/cancel").status_code == 404
            assert carol.post(f"/api/v1/jobs/{carol_job}/cancel").status_code == 200
            events = sse_events(live)
        alice.post(f"/api/v1/jobs/{alice_job}/cancel")
    assert events[-1][1] == {"type": "done", "status": "cancelled", "finish_reason": None}


# --- unrouted stream paths


@pytest.mark.parametrize("path", ["/api/v1/foo/events", "/v1/models/events", "/v1/events", "/api/v1/jobs/events"])
def test_unrouted_events_paths_are_404_with_the_error_shape(platform_server, committed_personas: Personas, path):
    for key in (None, committed_personas.alice.key):
        with http_client(platform_server, key) as client:
            response = client.get(path)
        assert response.status_code == 404, response.text
        assert response.json()["error"]["code"] == "not_found"
        assert set(response.json()["error"]) == {"type", "code", "message", "param"}


# --- request bodies are refused before they are read


def _raw_exchange(server: ThreadedUvicorn, head: bytes, body_parts: tuple[bytes, ...] = ()) -> tuple[int, bytes]:
    """Send a request head and some body bytes (never the rest) on a bare socket;
    the status and body of the answer, which must come without the rest."""
    url = urlsplit(server.url)
    with socket.create_connection((url.hostname, url.port), timeout=15) as sock:
        sock.sendall(head)
        for part in body_parts:
            sock.sendall(part)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            assert chunk, f"connection closed without an answer: {data!r}"
            data += chunk
        header_block, _, rest = data.partition(b"\r\n\r\n")
        lines = header_block.decode("latin1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = dict(line.lower().split(": ", 1) for line in lines[1:])
        length = int(headers.get("content-length", "0"))
        while len(rest) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            rest += chunk
        return status, rest


def _head(path: str, *extra: str) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: localhost", "Content-Type: application/json", *extra, "", ""]
    return "\r\n".join(lines).encode()


def _assert_too_large(status: int, body: bytes, limit: int, setting: str) -> None:
    assert status == 413, body
    error = json.loads(body)["error"]
    assert error["code"] == "request_too_large"
    assert str(limit) in error["message"] and setting in error["message"]


@pytest.mark.parametrize("path", ["/api/v1/jobs", "/v1/chat/completions", "/v1/embeddings", "/api/v1/nowhere"])
def test_an_oversized_content_length_is_refused_before_the_body_is_sent(platform_server, settings, path):
    settings.API_MAX_BODY_BYTES = 4096
    status, body = _raw_exchange(platform_server, _head(path, "Content-Length: 1000000000"))
    _assert_too_large(status, body, 4096, "API_MAX_BODY_BYTES")


def test_the_stock_handler_refuses_by_content_length_too(platform_server, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 4096
    status, body = _raw_exchange(platform_server, _head("/admin/login/", "Content-Length: 1000000000"))
    _assert_too_large(status, body, 4096, "DATA_UPLOAD_MAX_MEMORY_SIZE")


@pytest.mark.parametrize("path", ["/api/v1/jobs", "/v1/chat/completions"])
def test_a_chunked_body_is_refused_as_soon_as_it_grows_past_the_limit(platform_server, settings, path):
    """No Content-Length: the body's bytes are counted as they arrive, and the
    answer comes while the client is still sending (it never ends the body)."""
    settings.API_MAX_BODY_BYTES = 4096
    chunk = b"x" * 1500
    parts = tuple(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(4))  # 6000 bytes, no final chunk
    status, body = _raw_exchange(platform_server, _head(path, "Transfer-Encoding: chunked"), parts)
    _assert_too_large(status, body, 4096, "API_MAX_BODY_BYTES")


def test_a_body_within_the_limit_still_reaches_the_view(platform_server, held, settings, committed_personas: Personas):
    settings.API_MAX_BODY_BYTES = 4096
    with http_client(platform_server, committed_personas.alice.key) as alice:
        job_id = _submit(alice, {**HELD, "messages": [{"role": "user", "content": "x " * 1500}]})
        big = alice.post("/api/v1/jobs", json={**HELD, "messages": [{"role": "user", "content": "x " * 2500}]})
        assert big.status_code == 413 and big.json()["error"]["code"] == "request_too_large"
        alice.post(f"/api/v1/jobs/{job_id}/cancel")


def test_v1_takes_bodies_up_to_the_api_limit_when_it_is_above_djangos(
    platform_server, upstream, settings, committed_personas: Personas
):
    """The /v1 views read their body themselves: API_MAX_BODY_BYTES is their limit,
    not Django's DATA_UPLOAD_MAX_MEMORY_SIZE as well."""
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 2048
    settings.API_MAX_BODY_BYTES = 8192
    with http_client(platform_server, committed_personas.alice.key) as alice:
        ok = alice.post("/v1/embeddings", json={"model": "local-small", "input": "x " * 1500})
        assert ok.status_code == 200, ok.text
        big = alice.post("/v1/embeddings", json={"model": "local-small", "input": "x " * 5000})
        assert big.status_code == 413 and big.json()["error"]["code"] == "request_too_large"


# --- caps on open streams


def _open_sse(stack: contextlib.ExitStack, client: httpx.Client, job_id: str) -> httpx.Response:
    return stack.enter_context(client.stream("GET", f"/api/v1/jobs/{job_id}/events"))


def _open_v1_stream(stack: contextlib.ExitStack, client: httpx.Client) -> httpx.Response:
    return stack.enter_context(client.stream("POST", "/v1/chat/completions", json={**HELD, "stream": True}))


def _answer(client: httpx.Client, method: str, url: str, **kwargs: Any) -> httpx.Response:
    """The response's head, and its body unless it is a stream (which is left at
    once: a stream that should have been refused must not hang the test)."""
    with client.stream(method, url, **kwargs) as response:
        if response.status_code != 200:
            response.read()
        return response


def _slots(schema: str) -> int:
    return int(redis.Redis.from_url(settings.REDIS_URL).zcard(f"aip:{{{schema}}}:streams:tenant"))


def _job_count(persona: Persona) -> int:
    with tenant_context(persona.tenant):
        from apps.jobs.models import Job

        return Job.objects.filter(user_id=persona.user_id).count()


def test_open_streams_are_capped_per_key_and_per_tenant(platform_server, held, committed_personas: Personas, settings):
    settings.STREAMS_PER_KEY, settings.STREAMS_PER_TENANT = 2, 3
    alice_p, bob_p, carol_p = committed_personas.alice, committed_personas.bob, committed_personas.carol
    with (
        http_client(platform_server, alice_p.key, timeout=30) as alice,
        http_client(platform_server, bob_p.key, timeout=30) as bob,
        http_client(platform_server, carol_p.key, timeout=30) as carol,
        contextlib.ExitStack() as stack,
    ):
        alice_job, bob_job, carol_job = _submit(alice), _submit(bob), _submit(carol)
        assert _open_sse(stack, alice, alice_job).status_code == 200
        assert _open_v1_stream(stack, alice).status_code == 200  # a /v1 stream takes a slot too
        jobs_before = _job_count(alice_p)
        for refused in (
            _answer(alice, "GET", f"/api/v1/jobs/{alice_job}/events"),
            _answer(alice, "POST", "/v1/chat/completions", json={**HELD, "stream": True}),
            _answer(alice, "POST", "/v1/chat/completions", json=HELD),  # a non-stream wait as well
        ):
            assert refused.status_code == 429, refused.text
            assert refused.json()["error"]["code"] == "too_many_streams"
            assert "STREAMS_PER_KEY" in refused.json()["error"]["message"]
            assert int(refused.headers["Retry-After"]) > 0
        assert _job_count(alice_p) == jobs_before  # a refused /v1 call starts no job
        assert _open_sse(stack, bob, bob_job).status_code == 200  # the tenant's third
        over_tenant = _answer(bob, "GET", f"/api/v1/jobs/{bob_job}/events")
        assert over_tenant.status_code == 429
        assert "STREAMS_PER_TENANT" in over_tenant.json()["error"]["message"]
        assert _open_sse(stack, carol, carol_job).status_code == 200  # another tenant is not affected
        assert _slots("acme") == 3
        stack.close()  # the clients leave: their slots come back
        wait_for(lambda: _slots("acme") == 0 and _slots("globex") == 0)
        with alice.stream("GET", f"/api/v1/jobs/{alice_job}/events") as again:
            assert again.status_code == 200
        for client, job_id in ((alice, alice_job), (bob, bob_job), (carol, carol_job)):
            client.post(f"/api/v1/jobs/{job_id}/cancel")


def test_a_stream_that_ends_gives_its_slot_back(platform_server, held, committed_personas: Personas, settings):
    settings.STREAMS_PER_KEY = 1
    with http_client(platform_server, committed_personas.alice.key, timeout=30) as alice:
        for _ in range(3):
            job_id = _submit(alice)
            with alice.stream("GET", f"/api/v1/jobs/{job_id}/events") as response:
                assert response.status_code == 200
                assert alice.post(f"/api/v1/jobs/{job_id}/cancel").status_code == 200
                assert sse_events(response)[-1][1]["status"] == "cancelled"
            wait_for(lambda: _slots("acme") == 0)


def _revoke(persona: Persona) -> None:
    with tenant_context(persona.tenant):
        parsed = parse_key(persona.key)
        assert parsed is not None
        api_key_revoke(key=ApiKey.objects.get(prefix=parsed.prefix))


def test_a_revoked_keys_open_streams_end(platform_server, held, committed_personas: Personas, settings):
    settings.SSE_HEARTBEAT_SECONDS = 1
    alice_p = committed_personas.alice
    with (
        http_client(platform_server, alice_p.key, timeout=30) as alice,
        http_client(platform_server, committed_personas.bob.key, timeout=30) as bob,
        contextlib.ExitStack() as stack,
    ):
        job_id, bob_job = _submit(alice), _submit(bob)
        sse = _open_sse(stack, alice, job_id)
        chunks = _open_v1_stream(stack, alice)

        async def wait_non_stream() -> httpx.Response:
            async with httpx.AsyncClient(
                base_url=platform_server.url, headers={"Authorization": f"Bearer {alice_p.key}"}, timeout=30
            ) as client:
                return await client.post("/v1/chat/completions", json=HELD)

        # Each connection is read in a thread: without the fix they would hang on
        # heartbeats forever; leaving this block closes the clients, ending them.
        pool = ThreadPoolExecutor(3)
        try:
            waiting = pool.submit(asyncio.run, wait_non_stream())
            bob_sse = _open_sse(stack, bob, bob_job)
            wait_for(lambda: _slots("acme") == 4)
            assert sse.status_code == chunks.status_code == bob_sse.status_code == 200
            _revoke(alice_p)
            sse_read = pool.submit(sse_events, sse)
            chunks_read = pool.submit(lambda: [line for line in chunks.iter_lines() if line.startswith("data: ")])
            sse_end, chunk_lines = sse_read.result(timeout=30), chunks_read.result(timeout=30)
            answer = waiting.result(timeout=30)
        finally:
            pool.shutdown(wait=False)
        assert sse_end[-1][1]["type"] == "error" and sse_end[-1][1]["error_type"] == "invalid_api_key"
        assert json.loads(chunk_lines[-1][6:])["error"]["code"] == "invalid_api_key"
        assert answer.status_code == 401 and answer.json()["error"]["code"] == "invalid_api_key"
        wait_for(lambda: _slots("acme") == 1)  # bob's stream lives on
        assert bob.post(f"/api/v1/jobs/{bob_job}/cancel").status_code == 200
        assert sse_events(bob_sse)[-1][1]["status"] == "cancelled"


def test_a_non_stream_v1_wait_stops_when_its_client_leaves(
    platform_server, held, committed_personas: Personas, settings
):
    """The client hangs up while its /v1 call waits (V1_WAIT_TIMEOUT_SECONDS is
    600): the wait ends and frees its slot at once; the job itself runs on."""
    body = json.dumps(HELD).encode()
    head = _head(
        "/v1/chat/completions", f"Authorization: Bearer {committed_personas.alice.key}", f"Content-Length: {len(body)}"
    )
    url = urlsplit(platform_server.url)
    with socket.create_connection((url.hostname, url.port), timeout=15) as sock:
        sock.sendall(head + body)
        wait_for(lambda: _slots("acme") == 1)
    wait_for(lambda: _slots("acme") == 0)
    with http_client(platform_server, committed_personas.alice.key) as alice:
        jobs = alice.get("/api/v1/jobs").json()["results"]
        assert [job["status"] for job in jobs] == ["queued"]
        alice.post(f"/api/v1/jobs/{jobs[0]['id']}/cancel")
