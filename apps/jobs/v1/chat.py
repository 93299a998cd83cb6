"""`POST /v1/chat/completions`, for clients that speak OpenAI's protocol (the
official SDKs with only `base_url` and the key changed).

It is the same job pipeline as /api/v1/jobs: it creates
a job (a worker makes the call) and then follows the job's event stream, either
relaying it as `chat.completion.chunk` events or waiting for `done` and answering
one `chat.completion`. The job id is in the `x-aip-job-id` header, so the async
API can find the job later. Errors use OpenAI's body and status codes, so SDKs
raise their usual exception classes.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponseBase, JsonResponse, StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt
from rest_framework import exceptions

from apps.accounts.authentication import InvalidKey
from apps.accounts.selectors import Principal
from apps.core.errors import ApiError, InvalidRequest, api_error_body, error_body, validation_error_body
from apps.core.threads import in_thread
from apps.ratelimit.limits import (
    ratelimit_headers,
)
from apps.tenants.db import current_schema, release_connection
from apps.tenants.middleware import activate_key_tenant

from ..leases import KeyRevoked, StreamLease, lease_acquire, release_on_close
from ..models import Job, JobStatus
from ..serializers import JobCreateSerializer
from ..sse import HEARTBEAT, job_event_stream, load_job
from ..submit import JobRequest, Submission, job_submit
from .common import (
    JOB_ID_HEADER,
    as_openai_error,
    authenticated_body,
    invalid_key_response,
    json_error,
    method_not_allowed,
    provider_failure_status,
)


def _chat_request(body: Any) -> tuple[JobRequest, bool, bool]:
    """OpenAI's chat request -> (JobRequest, stream, include_usage). Raises
    InvalidRequest or a DRF ValidationError naming the field (the one validator
    both APIs share: JobCreateSerializer)."""
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    body = dict(body)
    stream = body.get("stream")
    if stream is None:  # null means absent
        stream = False
    if not isinstance(stream, bool):
        raise InvalidRequest("stream must be true or false.", param="stream")
    options = body.get("stream_options")
    include_usage = isinstance(options, dict) and options.get("include_usage") is True
    user = body.get("user")
    if isinstance(user, str):  # also forwarded; kept on the job for the tenant's own reports
        metadata = body.get("metadata") or {}
        if isinstance(metadata, dict):  # anything else is refused by the serializer, naming metadata
            body["metadata"] = {**metadata, "openai_user": user[:512]}
    serializer = JobCreateSerializer(data=body)
    serializer.is_valid(raise_exception=True)
    request = serializer.job_request(stream=stream)
    return request, stream, include_usage


@dataclass(frozen=True)
class _Submitted:
    schema: str
    job: Job
    stream: bool
    include_usage: bool
    headers: dict[str, str]  # the rate-limit headers
    lease: StreamLease  # the connection's stream slot, held while it waits or streams


def _submit_with_slot(principal: Principal, request: JobRequest) -> tuple[StreamLease, Submission]:
    """Take the connection's stream slot, then submit: a caller over its cap
    (TooManyStreams, 429) starts no job that nobody would wait for."""
    lease = lease_acquire(principal=principal)
    try:
        return lease, job_submit(principal=principal, request=request)
    except BaseException:
        lease.release_sync()
        raise


def _submit(header: str, raw_body: bytes) -> _Submitted | JsonResponse:
    """Authenticate and create the job (in a thread: Postgres and Redis); or the
    error response, with the caller's rate-limit headers once they are known."""
    activate_key_tenant(header)
    try:
        try:
            principal, body = authenticated_body(header, raw_body)
        except InvalidKey as exc:
            return invalid_key_response(exc)
        except ApiError as exc:
            return json_error(exc.status_code, api_error_body(exc), exc.headers)
        try:
            request, stream, include_usage = _chat_request(body)
            lease, submission = _submit_with_slot(principal, request)
        except ApiError as exc:
            if exc.code == "model_not_found":
                exc.status_code = 404  # what OpenAI answers (the SDK raises NotFoundError)
            as_openai_error(exc)
            headers = exc.headers if "Retry-After" in exc.headers else {**ratelimit_headers(principal), **exc.headers}
            return json_error(exc.status_code, api_error_body(exc), headers)
        except exceptions.ValidationError as exc:
            return json_error(400, validation_error_body(exc), ratelimit_headers(principal))
        limits = submission.limits.headers() if submission.limits is not None else ratelimit_headers(principal)
        return _Submitted(current_schema(), submission.job, stream, include_usage, limits, lease)
    finally:
        release_connection()  # the response follows the job's stream, maybe for minutes


def _completion_id(job: Job) -> str:
    return f"chatcmpl-{job.pk.hex}"


def _usage(job: Job) -> dict[str, int]:
    prompt, completion = job.input_tokens or 0, job.output_tokens or 0
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _failure(job: Job) -> tuple[int, dict[str, Any]]:
    """A failed or cancelled job as an OpenAI error: the provider's rate limit stays
    a 429, its other failures are a 502, a cancel a 409."""
    if job.status == JobStatus.CANCELLED:
        return 409, error_body(
            error_type="invalid_request_error", code="job_cancelled", message="The job was cancelled."
        )
    status, error_type = provider_failure_status(provider_status=job.error_status, error_type=job.error_type)
    return status, error_body(error_type=error_type, code=job.error_type, message=job.error_message)


@csrf_exempt  # an API authenticated by bearer key, not a browser form
async def chat_completions(request: HttpRequest) -> HttpResponseBase:
    if request.method != "POST":
        return method_not_allowed()
    # read(), not .body: the edge (aiplatform.asgi.BodyLimit) already held the body to
    # API_MAX_BODY_BYTES, and .body would hold it to DATA_UPLOAD_MAX_MEMORY_SIZE too.
    submitted = await in_thread(_submit, request.headers.get("Authorization", ""), request.read())
    if isinstance(submitted, JsonResponse):
        return submitted
    schema, job, include_usage, lease = submitted.schema, submitted.job, submitted.include_usage, submitted.lease
    headers = {JOB_ID_HEADER: str(job.pk), **submitted.headers}
    if submitted.stream:
        response = StreamingHttpResponse(
            _chunks(schema, job, include_usage, lease), content_type="text/event-stream", headers=headers
        )
        response["Cache-Control"] = "no-cache"
        response["X-Accel-Buffering"] = "no"
        release_on_close(response, lease)
        return response
    try:
        answer = await _wait_for_answer(request, schema, job, lease)
    finally:
        await lease.release()
    if isinstance(answer, JsonResponse):
        for name, value in headers.items():
            answer.headers.setdefault(name, value)
        return answer
    pieces, calls, usage, final = answer
    if final["type"] == "error":
        status, error_type = provider_failure_status(
            provider_status=final.get("provider_status"), error_type=final["error_type"]
        )
        return json_error(
            status, error_body(error_type=error_type, code=final["error_type"], message=final["message"]), headers
        )
    if final["status"] != JobStatus.SUCCEEDED:
        status, body = _failure(await in_thread(load_job, schema, job.pk))
        return json_error(status, body, headers)
    if usage is None:  # served from Postgres (the stream had expired): no usage event
        usage = _usage(await in_thread(load_job, schema, job.pk))
    completion = {
        "id": _completion_id(job),
        "object": "chat.completion",
        "created": int(job.created_at.timestamp()),
        "model": job.model,
        "choices": [
            {
                "index": 0,
                "message": _message("".join(pieces), calls),
                "finish_reason": final["finish_reason"],
                "logprobs": None,
            }
        ],
        "usage": usage,
    }
    return JsonResponse(completion, headers=headers)


# What the client gets when it left before the answer (it reads nothing): nginx's
# "client closed request", so logs tell these apart from answers.
CLIENT_GONE_STATUS = 499


async def _wait_for_answer(request: HttpRequest, schema: str, job: Job, lease: StreamLease) -> _Answer | JsonResponse:
    """Wait for the job's text, tool calls, usage and ending, at most V1_WAIT_TIMEOUT_SECONDS
    and only while the client is still there (aiplatform.asgi's StreamHandler sets
    `client_gone`); else the error response. Giving up stops the wait, not the job."""
    if job.status == JobStatus.SUCCEEDED:  # answered at submission (from the cache)
        final = {"type": "done", "status": job.status, "finish_reason": job.finish_reason}
        return [job.output], job.tool_calls or [], _usage(job), final
    collect = asyncio.ensure_future(_collect(schema, job, lease))
    waits: set[asyncio.Future[Any]] = {collect}
    gone: asyncio.Event | None = getattr(request, "client_gone", None)
    if gone is not None:
        waits.add(asyncio.ensure_future(gone.wait()))
    try:
        await asyncio.wait(waits, timeout=settings.V1_WAIT_TIMEOUT_SECONDS, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in waits:
            task.cancel()
    if collect.done() and not collect.cancelled():
        try:
            return collect.result()
        except KeyRevoked as exc:
            return invalid_key_response(exc)
    if gone is not None and gone.is_set():
        body = error_body(error_type="invalid_request_error", code="client_gone", message="The client disconnected.")
        return json_error(CLIENT_GONE_STATUS, body)
    body = error_body(
        error_type="server_error",
        code="timeout",
        message=f"The job is still running after {settings.V1_WAIT_TIMEOUT_SECONDS}s; poll GET /api/v1/jobs/{job.pk}.",
    )
    return json_error(504, body)


async def _collect(schema: str, job: Job, lease: StreamLease) -> _Answer:
    """The job's answer assembled from its events (its text, tool calls, usage and
    ending), so a completed call costs no second trip to Postgres."""
    pieces: list[str] = []
    calls: list[dict[str, Any]] = []
    usage: dict[str, Any] | None = None
    async for _, event in job_event_stream(schema, job, lease=lease):
        kind = event["type"]
        if kind == "delta":
            pieces.append(event["text"])
        elif kind == "tool_call":
            _assemble(calls, event)
        elif kind == "fallback":  # the next model starts over
            pieces.clear()
            calls.clear()
        elif kind == "usage":
            usage = _usage_from_event(event)
        elif kind in ("done", "error"):
            return pieces, calls, usage, event
    raise AssertionError("a job's event stream ends with done or error")


# The text pieces, the tool calls, the usage and the closing event of an answer.
_Answer = tuple[list[str], list[dict[str, Any]], dict[str, Any] | None, dict[str, Any]]


def _assemble(calls: list[dict[str, Any]], event: dict[str, Any]) -> None:
    """Add a `tool_call` event's piece to the calls (OpenAI's shape)."""
    index = event["index"]
    while len(calls) <= index:
        calls.append({"id": "", "type": "function", "function": {"name": "", "arguments": ""}})
    call = calls[index]
    if event.get("id"):
        call["id"] = event["id"]
    if event.get("name"):
        call["function"]["name"] += event["name"]
    call["function"]["arguments"] += event.get("arguments", "")


def _message(text: str, calls: list[dict[str, Any]]) -> dict[str, Any]:
    """The assistant's message: its text (null when it only called tools), its tool calls."""
    message: dict[str, Any] = {"role": "assistant", "content": text or (None if calls else ""), "refusal": None}
    if calls:
        message["tool_calls"] = calls
    return message


def _tool_call_delta(event: dict[str, Any]) -> dict[str, Any]:
    """A `tool_call` event as a chunk's delta: the call's head (id, type, name) with
    its first piece, argument fragments after."""
    call: dict[str, Any] = {"index": event["index"]}
    function: dict[str, Any] = {"arguments": event.get("arguments", "")}
    if event.get("id"):
        call["id"], call["type"] = event["id"], "function"
    if event.get("name"):
        function["name"] = event["name"]
    call["function"] = function
    return {"tool_calls": [call]}


def _usage_from_event(event: dict[str, Any]) -> dict[str, int]:
    prompt, completion = event["input_tokens"], event["output_tokens"]
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _chunk(job: Job, created: int, delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
    chunk = {
        "id": _completion_id(job),
        "object": "chat.completion.chunk",
        "created": created,
        "model": job.model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}],
    }
    return b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"


async def _chunks(schema: str, job: Job, include_usage: bool, lease: StreamLease) -> AsyncIterator[bytes]:
    """The job's events in OpenAI's chunk format: a role chunk, content chunks, a
    finish chunk, the usage chunk when asked for, then `data: [DONE]`. A failed job
    sends an `error` event (the SDK raises it) and no [DONE]; so does a key revoked
    while it streams."""
    try:
        async for chunk in _job_chunks(schema, job, include_usage, lease):
            yield chunk
    except KeyRevoked as exc:
        body = error_body(error_type="invalid_request_error", code="invalid_api_key", message=str(exc))
        yield b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"
    finally:
        await lease.release()


async def _job_chunks(schema: str, job: Job, include_usage: bool, lease: StreamLease) -> AsyncIterator[bytes]:
    created = int(time.time())
    yield _chunk(job, created, {"role": "assistant", "content": ""})
    usage: dict[str, int] | None = None
    sent = False  # any content yet
    async for _, event in job_event_stream(schema, job, lease=lease):
        kind = event["type"]
        if event is HEARTBEAT[1]:
            yield b": keep-alive\n\n"
        elif kind == "delta":
            sent = True
            yield _chunk(job, created, {"content": event["text"]})
        elif kind == "tool_call":
            sent = True
            yield _chunk(job, created, _tool_call_delta(event))
        elif kind == "fallback":
            if not sent:  # nothing shown yet: the next model's answer streams on seamlessly
                continue
            # OpenAI's chunks cannot take back text a client has shown: end with an
            # error (the SDK raises it) rather than splice two answers together.
            body = error_body(
                error_type="server_error",
                code="provider_stream_broken",
                message=f"{event['from']}'s stream broke mid-answer ({event['reason']}); the job continues on"
                f" {event['to']}: its complete answer will be at GET /api/v1/jobs/{job.pk}.",
            )
            yield b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"
            return
        elif kind == "usage":
            usage = _usage_from_event(event)
        elif kind == "done" and event["status"] == JobStatus.SUCCEEDED:
            yield _chunk(job, created, {}, event["finish_reason"] or "stop")
            if include_usage:
                if usage is None:  # served from Postgres after the stream expired
                    usage = _usage(await in_thread(load_job, schema, job.pk))
                final = {
                    "id": _completion_id(job),
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": job.model,
                    "choices": [],
                    "usage": usage,
                }
                yield b"data: " + json.dumps(final, separators=(",", ":")).encode() + b"\n\n"
            yield b"data: [DONE]\n\n"
        else:  # error, or done with status cancelled
            _, body = _failure(await in_thread(load_job, schema, job.pk))
            yield b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"
