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
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponseBase, JsonResponse, StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt
from rest_framework import exceptions

from apps.accounts.authentication import InvalidKey
from apps.accounts.selectors import Principal
from apps.core.errors import (
    ApiError,
    Conflict,
    InvalidRequest,
    NotFound,
    api_error_body,
    error_body,
    validation_error_body,
)
from apps.core.threads import in_thread
from apps.ratelimit.limits import (
    ratelimit_headers,
)
from apps.tenants.db import current_schema, release_connection, tenant_connection
from apps.tenants.middleware import activate_key_tenant

from ..leases import KeyRevoked, StreamLease, lease_acquire, release_on_close
from ..lifecycle import job_cancel
from ..models import Job, JobStatus
from ..serializers import JobCreateSerializer
from ..sse import job_event_stream, load_job
from ..submit import JobRequest, Submission, job_submit
from .common import (
    COST_HEADER,
    JOB_ID_HEADER,
    NO_RETRY,
    as_openai_error,
    authenticated_body,
    invalid_key_response,
    job_failure,
    json_error,
    method_not_allowed,
    provider_error_response,
)
from .shapes import Answer, completion_body, job_served, job_usage
from .stream import job_chunks

logger = logging.getLogger(__name__)


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
    principal: Principal


@dataclass
class _StopIfAbandoned:
    """A response closer (aiplatform.asgi runs it once the response is over): a
    stream its client closed before the end cancels its job, so a chat UI's Stop
    button stops the spending (V1_CANCEL_ON_DISCONNECT). The jobs API's streams
    keep theirs running: that is their point."""

    schema: str
    principal: Principal
    job_id: uuid.UUID
    finished: bool = False

    async def __call__(self) -> None:
        if not self.finished and settings.V1_CANCEL_ON_DISCONNECT:
            await in_thread(self._cancel)

    def _cancel(self) -> None:
        tenant_connection().set_schema(self.schema)
        try:
            job_cancel(principal=self.principal, job_id=self.job_id)
            logger.info("job %s cancelled: its /v1 stream was closed by the client", self.job_id)
        except (Conflict, NotFound):
            pass  # it had ended meanwhile
        finally:
            release_connection()


def _submit_with_slot(
    principal: Principal, request: JobRequest, idempotency_key: str | None
) -> tuple[StreamLease, Submission]:
    """Take the connection's stream slot, then submit: a caller over its cap
    (TooManyStreams, 429) starts no job that nobody would wait for."""
    lease = lease_acquire(principal=principal)
    try:
        return lease, job_submit(principal=principal, request=request, idempotency_key=idempotency_key)
    except BaseException:
        lease.release_sync()
        raise


def _submit(header: str, raw_body: bytes, idempotency_key: str | None) -> _Submitted | JsonResponse:
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
            if idempotency_key is not None and len(idempotency_key) > 255:
                raise InvalidRequest("Idempotency-Key is longer than 255 characters.", param="Idempotency-Key")
            request, stream, include_usage = _chat_request(body)
            lease, submission = _submit_with_slot(principal, request, idempotency_key)
        except ApiError as exc:
            if exc.code == "model_not_found":
                exc.status_code = 404  # what OpenAI answers (the SDK raises NotFoundError)
            as_openai_error(exc)
            headers = exc.headers if "Retry-After" in exc.headers else {**ratelimit_headers(principal), **exc.headers}
            return json_error(exc.status_code, api_error_body(exc), headers)
        except exceptions.ValidationError as exc:
            return json_error(400, validation_error_body(exc), ratelimit_headers(principal))
        limits = submission.limits.headers() if submission.limits is not None else ratelimit_headers(principal)
        return _Submitted(current_schema(), submission.job, stream, include_usage, limits, lease, principal)
    finally:
        release_connection()  # the response follows the job's stream, maybe for minutes


@csrf_exempt  # an API authenticated by bearer key, not a browser form
async def chat_completions(request: HttpRequest) -> HttpResponseBase:
    if request.method != "POST":
        return method_not_allowed()
    # read(), not .body: the edge (aiplatform.asgi.BodyLimit) already held the body to
    # API_MAX_BODY_BYTES, and .body would hold it to DATA_UPLOAD_MAX_MEMORY_SIZE too.
    submitted = await in_thread(
        _submit,
        request.headers.get("Authorization", ""),
        request.read(),
        request.headers.get("Idempotency-Key") or None,
    )
    if isinstance(submitted, JsonResponse):
        return submitted
    schema, job, include_usage, lease = submitted.schema, submitted.job, submitted.include_usage, submitted.lease
    headers = {JOB_ID_HEADER: str(job.pk), **submitted.headers}
    if submitted.stream:
        stop = _StopIfAbandoned(schema, submitted.principal, job.pk)
        response = StreamingHttpResponse(
            _chunks(schema, job, include_usage, lease, stop), content_type="text/event-stream", headers=headers
        )
        response["Cache-Control"] = "no-cache"
        response["X-Accel-Buffering"] = "no"
        release_on_close(response, lease)
        closers = getattr(response, "async_closers", [])
        response.async_closers = [*closers, stop]  # type: ignore[attr-defined]
        return response
    try:
        answer = await _wait_for_answer(request, schema, job, lease)
    finally:
        await lease.release()
    if isinstance(answer, JsonResponse):
        for name, value in headers.items():
            answer.headers.setdefault(name, value)
        return answer
    final, usage = answer.final, answer.usage
    if final["type"] == "error":
        return provider_error_response(
            error_type=final["error_type"],
            status=final.get("provider_status"),
            message=final["message"],
            code=final.get("code"),
            param=final.get("param"),
            retry_after=final.get("retry_after"),
            headers=headers,
        )
    if final["status"] != JobStatus.SUCCEEDED:
        return job_failure(await in_thread(load_job, schema, job.pk), headers)
    if usage is None or usage["cost_usd"] is None:  # served from Postgres, or from the cache at submission
        stored = await in_thread(load_job, schema, job.pk)
        usage, answer.served = job_usage(stored), job_served(stored)
    if usage["cost_usd"] is not None:
        headers[COST_HEADER] = usage["cost_usd"]
    completion = completion_body(job, answer, usage)
    return JsonResponse(completion, headers=headers)


# What the client gets when it left before the answer (it reads nothing): nginx's
# "client closed request", so logs tell these apart from answers.
CLIENT_GONE_STATUS = 499


async def _wait_for_answer(request: HttpRequest, schema: str, job: Job, lease: StreamLease) -> Answer | JsonResponse:
    """Wait for the job's text, tool calls, usage and ending, at most V1_WAIT_TIMEOUT_SECONDS
    and only while the client is still there (aiplatform.asgi's StreamHandler sets
    `client_gone`); else the error response. Giving up stops the wait, not the job."""
    if job.status == JobStatus.SUCCEEDED:  # answered at submission (from the cache)
        return Answer.of_job(job)
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
    return json_error(504, body, {NO_RETRY: "false"})  # a retry would start a second job


async def _collect(schema: str, job: Job, lease: StreamLease) -> Answer:
    """The job's answer assembled from its events (its text, tool calls, refusal,
    logprobs, usage and ending), so a completed call costs no second trip to Postgres."""
    answer = Answer({})
    async for _, event in job_event_stream(schema, job, lease=lease):
        if event["type"] in ("done", "error"):
            answer.final = event
            return answer
        answer.take(event)
    raise AssertionError("a job's event stream ends with done or error")


async def _chunks(
    schema: str, job: Job, include_usage: bool, lease: StreamLease, stop: _StopIfAbandoned
) -> AsyncIterator[bytes]:
    """The job's events in OpenAI's chunk format: a role chunk, content chunks, a
    finish chunk, the usage chunk when asked for, then `data: [DONE]`. A failed job
    sends an `error` event (the SDK raises it) and no [DONE]; so does a key revoked
    while it streams."""
    try:
        async for chunk in job_chunks(schema, job, include_usage, lease):
            yield chunk
        stop.finished = True  # the stream came to its end (answer or error)
    except KeyRevoked as exc:
        stop.finished = True  # the key's holder may not stop what it no longer owns
        body = error_body(error_type="invalid_request_error", code="invalid_api_key", message=str(exc))
        yield b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"
    finally:
        await lease.release()
