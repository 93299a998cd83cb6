"""`GET /api/v1/jobs/{id}/events`: a job's events as server-sent events.

An async view under ASGI (served by aiplatform.asgi's StreamHandler, not the
sync API handler): it replays the job's Redis Stream from the start, from
`Last-Event-ID` or from `?after=`, then follows it (through the process's
StreamHub, one XREAD for all listeners) until `done` or `error`, and closes. A
comment line every SSE_HEARTBEAT_SECONDS keeps the connection open through
proxies. A job whose stream has expired is served from Postgres as one `delta`
and a `done`. A client that disconnects cancels nothing: the job runs on.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponseBase, JsonResponse, StreamingHttpResponse

from apps.accounts.authentication import InvalidKey, principal_from_header
from apps.core.errors import api_error_body, error_body
from apps.core.threads import in_thread
from apps.tenants.db import current_schema, release_connection, tenant_connection
from apps.tenants.middleware import activate_key_tenant

from .events import FINAL_EVENTS, finish_reasons, stored_answer_events, stream_key
from .hub import stream_hub
from .leases import KeyRevoked, StreamLease, TooManyStreams, lease_acquire, release_on_close
from .models import FINAL_STATUSES, Job
from .selectors import job_get

STREAM_ID = re.compile(r"^(\d{1,20})-(\d{1,20})$")
MAX_ID_PART = 2**64 - 1  # each part of a Redis Stream id is an unsigned 64-bit number
# Synthetic ids for a job served from Postgres (its stream expired): below any
# real entry id, so a client resuming from them never skips real events.
FALLBACK_DELTA_ID, FALLBACK_USAGE_ID, FALLBACK_DONE_ID = "0-1", "0-2", "0-3"
FALLBACK_IDS = frozenset({FALLBACK_DELTA_ID, FALLBACK_USAGE_ID, FALLBACK_DONE_ID})


def load_job(schema: str, pk: Any) -> Job:
    """Re-read a job from a long-lived stream without keeping a pooled connection.
    Runs on any web thread, so it selects the job's schema itself."""
    tenant_connection().set_schema(schema)
    try:
        return Job.objects.get(pk=pk)
    finally:
        release_connection()


def stream_position(value: str) -> bool:
    """Whether `value` is an entry id Redis accepts: `<ms>-<seq>`, each within
    0..2^64-1. Anything else must not reach the hub's shared XREAD."""
    match = STREAM_ID.match(value)
    return match is not None and all(int(part) <= MAX_ID_PART for part in match.groups())


def _authorize(header: str, job_id: str, *, lease: bool) -> tuple[str, Job | None, StreamLease | None]:
    """(schema, the caller's job or None, the stream's slot when `lease` and the
    job was found); raises InvalidKey or TooManyStreams. Runs in a thread: it may
    query Postgres (key and job lookups)."""
    activate_key_tenant(header)
    principal = principal_from_header(header)
    if principal is None:
        raise InvalidKey("Send your API key: 'Authorization: Bearer aip_...'.")
    try:
        job = job_get(principal=principal, job_id=job_id)
        slot = lease_acquire(principal=principal) if lease and job is not None else None
        return current_schema(), job, slot
    finally:
        release_connection()  # the stream may stay open for minutes


def _sse(event_id: str, data: dict[str, Any] | str) -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    return f"id: {event_id}\ndata: {payload}\n\n".encode()


def _from_postgres(job: Job) -> list[tuple[str, dict[str, Any]]]:
    events: list[tuple[str, dict[str, Any]]] = []
    # The whole answer, under one id: a stream served from Postgres replays whole.
    events.extend((FALLBACK_DELTA_ID, event) for event in stored_answer_events(job))
    if job.input_tokens is not None and job.output_tokens is not None:
        usage = {
            "type": "usage",
            "input_tokens": job.input_tokens,
            "output_tokens": job.output_tokens,
            "estimated": job.usage_estimated,
        }
        events.append((FALLBACK_USAGE_ID, usage))
    if job.error_type:
        error = {
            "type": "error",
            "error_type": job.error_type,
            "message": job.error_message,
            "provider_status": job.error_status,
        }
        events.append((FALLBACK_DONE_ID, error))
    else:
        done: dict[str, Any] = {"type": "done", "status": job.status, "finish_reason": job.finish_reason or None}
        if job.choices:
            done["finish_reasons"] = finish_reasons(job)
        events.append((FALLBACK_DONE_ID, done))
    return events


def _on_heartbeat(schema: str, pk: Any, lease: StreamLease | None) -> Job | None:
    """A quiet stream's check, in one thread hop: renew its lease and re-read its
    key when due (None: the key was revoked), and reload its job."""
    if lease is not None and lease.due() and not lease.refresh():
        return None
    return load_job(schema, pk)


# Yielded by job_event_stream when nothing arrived for SSE_HEARTBEAT_SECONDS.
HEARTBEAT = ("", {"type": "heartbeat"})


async def job_event_stream(
    schema: str, job: Job, after: str = "0-0", lease: StreamLease | None = None
) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """A job's events as (entry id, event) from `after` on, ending with `done` or
    `error`; HEARTBEAT while nothing happens. Shared by the SSE endpoint and the
    OpenAI-compatible /v1/chat/completions. `job` must be freshly loaded (its
    status decides whether Redis or Postgres serves it). With a `lease`, it is
    renewed and the key re-checked as events and heartbeats pass (KeyRevoked)."""
    key = stream_key(schema=schema, job_id=job.pk)
    hub = stream_hub()
    heartbeat = settings.SSE_HEARTBEAT_SECONDS
    # `job` was loaded by the caller a moment ago. A job that had not ended then
    # needs no check here: a stream its worker has not created yet is just
    # waited on. One that had ended is served from Postgres if its stream is gone.
    if job.status in FINAL_STATUSES and (after in FALLBACK_IDS or not await hub.commands.exists(key)):
        for event in _from_postgres(job):
            yield event
        return
    async with hub.listen(key, after) as listener:
        queue = listener.queue
        while True:
            if queue.empty():
                try:
                    async with asyncio.timeout(heartbeat):
                        item = await queue.get()
                except TimeoutError:
                    reloaded = await in_thread(_on_heartbeat, schema, job.pk, lease)
                    if reloaded is None:
                        raise KeyRevoked("The API key was revoked.") from None
                    job = reloaded
                    yield HEARTBEAT
                    if job.status in FINAL_STATUSES and queue.empty():
                        # Ended without a closing event we can still read: the stream
                        # expired while we waited (replay it all from Postgres), or the
                        # job was ended by the sweeper after its worker died (send just
                        # the ending).
                        events = _from_postgres(job)
                        for event in events if not await hub.commands.exists(key) else events[-1:]:
                            yield event
                        return
                    continue
            else:
                item = queue.get_nowait()
            if isinstance(item, BaseException):
                raise item
            entry_id, payload = item
            event = json.loads(payload)
            if lease is not None:
                await lease.tick()
            yield entry_id, event
            if event["type"] in FINAL_EVENTS:
                return


REVOKED_EVENT = {
    "type": "error",
    "error_type": "invalid_api_key",
    "message": "The API key was revoked: this stream ends.",
    "provider_status": None,
}


async def _sse_body(schema: str, job: Job, after: str, lease: StreamLease) -> AsyncIterator[bytes]:
    # When the client goes away the handler cancels this generator (and releases
    # the lease): nothing else to undo, and the job runs on.
    try:
        async for event_id, event in job_event_stream(schema, job, after, lease):
            yield b": keep-alive\n\n" if event is HEARTBEAT[1] else _sse(event_id, event)
    except KeyRevoked:
        # No id: a client resuming elsewhere resumes from its last real event.
        yield b"data: " + json.dumps(REVOKED_EVENT, separators=(",", ":")).encode() + b"\n\n"
    finally:
        await lease.release()


async def job_events(request: HttpRequest, job_id: str) -> HttpResponseBase:
    header_id = request.headers.get("Last-Event-ID")
    param, after = ("Last-Event-ID", header_id) if header_id else ("after", request.GET.get("after") or "0-0")
    valid = stream_position(after)
    try:
        schema, job, lease = await in_thread(_authorize, request.headers.get("Authorization", ""), job_id, lease=valid)
    except InvalidKey as exc:
        body = error_body(error_type="authentication_error", code="invalid_api_key", message=str(exc))
        return JsonResponse(body, status=401, headers={"WWW-Authenticate": 'Bearer realm="api"'})
    except TooManyStreams as exc:
        return JsonResponse(api_error_body(exc), status=exc.status_code, headers=exc.headers)
    if job is None:
        body = error_body(
            error_type="invalid_request_error", code="not_found", message=f"No job with id {job_id}.", param="id"
        )
        return JsonResponse(body, status=404)
    if not valid:
        body = error_body(
            error_type="invalid_request_error",
            code="invalid_event_id",
            message=f"{param} must be an event id like '1700000000000-0' (two numbers up to {MAX_ID_PART}),"
            f" got {after[:64]!r}.",
            param=param,
        )
        return JsonResponse(body, status=400)
    assert lease is not None
    response = StreamingHttpResponse(_sse_body(schema, job, after, lease), content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    release_on_close(response, lease)
    return response
