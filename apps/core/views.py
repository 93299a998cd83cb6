from __future__ import annotations

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.defaults import page_not_found
from django.views.defaults import server_error as default_server_error

from .errors import error_body
from .paths import API_PATH_PREFIXES


def not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """API paths get the API's JSON error shape; the admin keeps Django's page."""
    if request.path.startswith(API_PATH_PREFIXES):
        body = error_body(
            error_type="invalid_request_error",
            code="not_found",
            message=f"No route for {request.method} {request.path}.",
        )
        return JsonResponse(body, status=404)
    return page_not_found(request, exception or Exception("not found"))


def server_error(request: HttpRequest) -> HttpResponse:
    if not request.path.startswith(API_PATH_PREFIXES):
        return default_server_error(request)
    body = error_body(error_type="server_error", code="internal_error", message="Internal server error.")
    return JsonResponse(body, status=500)
