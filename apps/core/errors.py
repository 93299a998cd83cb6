"""One error shape for every API response, the one the OpenAI API uses:

    {"error": {"type": ..., "code": ..., "message": ..., "param": ...}}

Services raise `ApiError` subclasses; the DRF exception handler below renders them
and DRF's own exceptions (validation, authentication, 404, throttling) alike.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.exceptions import PermissionDenied, RequestDataTooBig
from django.http import Http404
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler


class ApiError(Exception):
    status_code: int = status.HTTP_400_BAD_REQUEST
    error_type = "invalid_request_error"
    code = "invalid_request"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        status_code: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status_code is not None:
            self.status_code = status_code
        self.param = param
        self.headers = headers or {}


class InvalidRequest(ApiError):
    pass


class NotFound(ApiError):
    status_code = status.HTTP_404_NOT_FOUND
    code = "not_found"


class Conflict(ApiError):
    status_code = status.HTTP_409_CONFLICT
    code = "conflict"


class PayloadTooLarge(ApiError):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    code = "context_length_exceeded"


class ServiceUnavailable(ApiError):
    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    error_type = "server_error"
    code = "service_unavailable"


def error_body(*, error_type: str, code: str, message: str, param: str | None = None) -> dict[str, Any]:
    return {"error": {"type": error_type, "code": code, "message": message, "param": param}}


def _first_validation_error(detail: Any, path: str = "") -> tuple[str | None, str, str]:
    """(param, code, message) of the first field error in a DRF ValidationError detail.
    Nested fields are named with dots and indexes, e.g. `messages.0.role`."""
    if isinstance(detail, dict):
        for key, value in detail.items():
            name = path if key == "non_field_errors" else (f"{path}.{key}" if path else str(key))
            return _first_validation_error(value, name)
    if isinstance(detail, list):
        for index, value in enumerate(detail):
            if isinstance(value, (dict, list)) and value:
                if isinstance(value, dict):
                    return _first_validation_error(value, f"{path}.{index}" if path else str(index))
                return _first_validation_error(value, path)
            if isinstance(value, exceptions.ErrorDetail):
                return _first_validation_error(value, path)
    if isinstance(detail, exceptions.ErrorDetail):
        message = str(detail)
        return (path or None, str(detail.code or "invalid"), f"{path}: {message}" if path else message)
    return (path or None, "invalid", str(detail))


def validation_error_body(exc: exceptions.ValidationError) -> dict[str, Any]:
    param, code, message = _first_validation_error(exc.detail)
    return error_body(error_type="invalid_request_error", code=code, message=message, param=param)


def api_error_body(exc: ApiError) -> dict[str, Any]:
    return error_body(error_type=exc.error_type, code=exc.code, message=exc.message, param=exc.param)


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, RequestDataTooBig):
        exc = ApiError(
            f"The request body is larger than {settings.DATA_UPLOAD_MAX_MEMORY_SIZE} bytes"
            " (DATA_UPLOAD_MAX_MEMORY_SIZE).",
            code="request_too_large",
            status_code=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
        )
    if isinstance(exc, ApiError):
        return Response(api_error_body(exc), status=exc.status_code, headers=exc.headers)
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied()

    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, exceptions.ValidationError):
        response.data = validation_error_body(exc)
        return response
    if isinstance(exc, (exceptions.NotAuthenticated, exceptions.AuthenticationFailed)):
        response.status_code = status.HTTP_401_UNAUTHORIZED
        response.data = error_body(
            error_type="authentication_error", code="invalid_api_key", message=_detail_text(exc.detail)
        )
        response["WWW-Authenticate"] = 'Bearer realm="api"'
        return response
    error_type = {
        status.HTTP_403_FORBIDDEN: "permission_error",
        status.HTTP_404_NOT_FOUND: "invalid_request_error",
        status.HTTP_429_TOO_MANY_REQUESTS: "rate_limit_error",
    }.get(response.status_code, "invalid_request_error" if response.status_code < 500 else "server_error")
    code = getattr(exc, "default_code", "error")
    response.data = error_body(error_type=error_type, code=str(code), message=_detail_text(getattr(exc, "detail", exc)))
    return response


def _detail_text(detail: Any) -> str:
    if isinstance(detail, dict):
        return "; ".join(f"{key}: {_detail_text(value)}" for key, value in detail.items())
    if isinstance(detail, list):
        return "; ".join(_detail_text(item) for item in detail)
    return str(detail)
