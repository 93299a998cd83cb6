"""What every /v1 surface shares: OpenAI's error bodies and statuses, the
caller from its bearer key, the body parsed strictly."""

from __future__ import annotations

from typing import Any

from django.http import JsonResponse

from apps.accounts.authentication import InvalidKey, principal_from_header
from apps.accounts.selectors import Principal
from apps.core.errors import ApiError, error_body
from apps.core.jsonbody import json_loads

JOB_ID_HEADER = "x-aip-job-id"


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
    `insufficient_quota` 429 (the SDK raises RateLimitError), holds in flight a
    short 429 with Retry-After (SDKs retry it)."""
    if exc.code == "budget_exceeded":
        exc.status_code, exc.error_type, exc.code = 429, "insufficient_quota", "insufficient_quota"
    elif exc.code == "budget_busy":
        exc.status_code = 429
    return exc


def authenticated_body(header: str, raw_body: bytes) -> tuple[Principal, Any]:
    """The caller and the parsed JSON body; raises InvalidKey or InvalidRequest."""
    principal = principal_from_header(header)
    if principal is None:
        raise InvalidKey("You didn't provide an API key: send 'Authorization: Bearer aip_...'.")
    return principal, json_loads(raw_body or b"null")


def provider_failure_status(*, provider_status: int | None, error_type: str) -> tuple[int, str]:
    """(HTTP status, OpenAI error type) for a provider failure: the provider's rate
    limit stays a 429, a timeout is a 504, anything else a 502."""
    if provider_status == 429:
        return 429, "rate_limit_error"
    return (504 if error_type == "provider_timeout" else 502), "server_error"
