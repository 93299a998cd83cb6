"""What every /v1 surface shares: OpenAI's error bodies and statuses, the
caller from its bearer key, the body parsed strictly."""

from __future__ import annotations

import math
from typing import Any

from django.http import JsonResponse

from apps.accounts.authentication import InvalidKey, principal_from_header
from apps.accounts.selectors import Principal
from apps.core.errors import ApiError, error_body
from apps.core.jsonbody import json_loads
from apps.llm.providers import REQUEST_ERROR_STATUSES

from ..models import Job, JobStatus

JOB_ID_HEADER = "x-aip-job-id"
COST_HEADER = "x-aip-cost-usd"  # what a non-stream call cost (streams: the usage chunk's cost_usd)
# The SDKs retry 408, 409, 429 and 5xx unless an answer says not to: what is
# marked with it would only make a second job (the first still runs, or was
# cancelled), or be refused again (a budget used up).
NO_RETRY = "x-should-retry"


def json_error(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> JsonResponse:
    return JsonResponse(body, status=status, headers=headers)


def invalid_key_response(exc: Exception) -> JsonResponse:
    """The 401 an unknown or revoked key gets (the SDK raises AuthenticationError)."""
    body = error_body(error_type="invalid_request_error", code="invalid_api_key", message=str(exc))
    return json_error(401, body, {"WWW-Authenticate": 'Bearer realm="api"'})


def method_not_allowed() -> JsonResponse:
    return json_error(
        405, error_body(error_type="invalid_request_error", code="method_not_allowed", message="Use POST.")
    )


def as_openai_error(exc: ApiError) -> ApiError:
    """Our refusal as OpenAI answers it: a budget used up is OpenAI's
    `insufficient_quota` 429 (the SDK raises RateLimitError; told not to retry),
    holds in flight a short 429 with Retry-After (SDKs retry it), and a request
    no rate limit could ever take a 400 (OpenAI answers no 413 for content)."""
    if exc.code == "budget_exceeded":
        exc.status_code, exc.error_type, exc.code = 429, "insufficient_quota", "insufficient_quota"
        exc.headers = {**exc.headers, NO_RETRY: "false"}
    elif exc.code == "budget_busy":
        exc.status_code = 429
    elif exc.code == "rate_limit_too_large":
        exc.status_code = 400
    return exc


def authenticated_body(header: str, raw_body: bytes) -> tuple[Principal, Any]:
    """The caller and the parsed JSON body; raises InvalidKey or InvalidRequest."""
    principal = principal_from_header(header)
    if principal is None:
        raise InvalidKey("You didn't provide an API key: send 'Authorization: Bearer aip_...'.")
    return principal, json_loads(raw_body or b"null")


def provider_error_response(
    *,
    error_type: str,
    status: int | None,
    message: str,
    code: str | None = None,
    param: str | None = None,
    retry_after: float | None = None,
    headers: dict[str, str] | None = None,
) -> JsonResponse:
    """A provider's failure as OpenAI answers it, so SDKs raise their usual class:
    a request the provider refused as wrong (400, 413, 422) keeps its status,
    code, param and message (BadRequestError and kin); its rate limit stays a 429
    with its Retry-After; a timeout is a 504; anything else (its outage, a key or
    model name it refused: `upstream_misconfigured`) a 502."""
    headers = dict(headers or {})
    if error_type == "provider_error" and status in REQUEST_ERROR_STATUSES:
        body = error_body(error_type="invalid_request_error", code=code or error_type, message=message, param=param)
        return json_error(status, body, headers)
    if status == 429 and error_type == "provider_error":
        if retry_after is not None:
            headers["Retry-After"] = str(max(1, math.ceil(retry_after)))
        body = error_body(error_type="rate_limit_error", code=code or error_type, message=message)
        return json_error(429, body, headers)
    http_status = 504 if error_type == "provider_timeout" else 502
    return json_error(http_status, error_body(error_type="server_error", code=error_type, message=message), headers)


def job_failure(job: Job, headers: dict[str, str] | None = None) -> JsonResponse:
    """A failed or cancelled job as an OpenAI error (see provider_error_response);
    a cancel is a 409 that the SDK must not retry (the job it made was cancelled)."""
    if job.status == JobStatus.CANCELLED:
        body = error_body(error_type="invalid_request_error", code="job_cancelled", message="The job was cancelled.")
        return json_error(409, body, {**(headers or {}), NO_RETRY: "false"})
    return provider_error_response(
        error_type=job.error_type,
        status=job.error_status,
        message=job.error_message,
        code=job.error_code or None,
        param=job.error_param or None,
        headers=headers,
    )
