"""ASGI entry point: one app, three handlers.

- `ApiHandler`: the API's sync views (DRF), short. Django's stock ASGI handler
  serves a sync view through a dozen async<->thread handoffs (middleware hooks,
  signals, a new executor thread per request) that cost several times the view's
  own CPU; this runs the whole request (signals, sync middleware chain, view,
  body rendering, close) in ONE call on the web thread pool, then sends the bytes
  from the event loop.
- `StreamHandler`: the long-lived async views (server-sent events, /v1 chat
  completions that follow a job's stream, /v1 embeddings). No middleware: under
  load, Django's per-request thread and middleware hops, not the streaming, were
  most of the web process's CPU and put hundreds of milliseconds before the first
  byte. These views authenticate themselves (key prefix -> tenant schema ->
  principal) in one call on the thread pool, then stream from the event loop.
- Django's stock handler: everything else (admin, OpenAPI docs, static files).

Before any of them, `BodyLimit` refuses a request body larger than its route
allows (413 `request_too_large`): by its Content-Length before reading a byte,
or, without one, as soon as the bytes read pass the limit. Nothing is spooled
before authentication beyond that limit.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
from typing import Any

import django
import sentry_sdk
from asgiref.sync import iscoroutinefunction
from django.core.exceptions import RequestAborted, RequestDataTooBig
from django.core.handlers.asgi import ASGIHandler, ASGIRequest, get_script_prefix
from django.core.handlers.base import BaseHandler
from django.core.signals import request_started
from django.http import HttpRequest, HttpResponse, HttpResponseBase, JsonResponse, StreamingHttpResponse
from django.urls import Resolver404, resolve, set_script_prefix

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "aiplatform.settings.dev")

from apps.observability.tracing import tracing_init

tracing_init(service="aiplatform-web")  # before Django: nothing else is traced yet
django.setup(set_prefix=False)

from django.conf import settings  # noqa: E402

from apps.core.errors import error_body  # noqa: E402
from apps.core.paths import API_PATH_PREFIXES  # noqa: E402
from apps.core.threads import web_executor  # noqa: E402
from apps.core.views import not_found, server_error  # noqa: E402
from apps.llm.tokens import warm_up  # noqa: E402
from apps.observability import context  # noqa: E402
from apps.observability.tracing import name_server_span, traced_asgi  # noqa: E402

Scope = dict[str, Any]
logger = logging.getLogger(__name__)


class ApiHandler(ASGIHandler):
    def __init__(self) -> None:
        BaseHandler.__init__(self)
        self.load_middleware(is_async=False)
        # Reused threads: Django's ORM is sync, and a DB or broker round trip must
        # not block the event loop. Each request runs in its own context; the
        # tenant middleware selects the request's schema on the thread's connection.
        self.executor = web_executor()

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        try:
            body_file = await self.read_body(receive)
        except RequestAborted:  # the client left before sending its whole body
            return
        loop = asyncio.get_running_loop()
        context = contextvars.copy_context()
        try:
            response = await loop.run_in_executor(self.executor, context.run, self._respond, scope, body_file)
        finally:
            body_file.close()
        await self.send_response(response, send)

    def _respond(self, scope: Scope, body_file: Any) -> HttpResponseBase:
        set_script_prefix(get_script_prefix(scope))
        request_started.send(sender=self.__class__, scope=scope)
        request, response = self.create_request(scope, body_file)
        if request is not None:
            assert isinstance(request, ASGIRequest)
            response = self.get_response(request)
            match = request.resolver_match
            name_server_span(request.method or "", match.route if match is not None else None)
        assert response is not None
        if response.streaming:
            # API views do not stream; if one ever does, buffer it here, in the thread
            # that owns the request's database connections.
            buffered = HttpResponse(b"".join(response.streaming_content), status=response.status_code)  # type: ignore[attr-defined]
            for header, value in response.items():
                buffered[header] = value
            response.close()
            response = buffered
        # Closing sends request_finished, which returns the DB connection to the pool:
        # it must happen in this thread, and the rendered bytes no longer need it.
        response.close()
        return response


# Headers SecurityMiddleware and XFrameOptionsMiddleware would have added.
SECURITY_HEADERS = [(b"X-Content-Type-Options", b"nosniff"), (b"X-Frame-Options", b"DENY")]


class StreamHandler(ASGIHandler):
    """Serves the async views in ASYNC_PATHS (and `.../events`) without middleware;
    see the module docstring. A client that disconnects cancels the view's
    generator (its `finally` blocks run) and nothing else: jobs run on. A view
    that waits without streaming reads `request.client_gone` (an asyncio.Event)
    to stop waiting for a client that has left."""

    def __init__(self) -> None:
        BaseHandler.__init__(self)  # no middleware

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        try:
            body_file = await self.read_body(receive)
        except RequestAborted:
            return
        gone = asyncio.Event()
        watcher = asyncio.ensure_future(self._watch_disconnect(receive, gone))
        response: HttpResponseBase | None = None
        try:
            request, response = self.create_request(scope, body_file)
            if request is not None:
                request.client_gone = gone  # type: ignore[attr-defined]
                response = await self._view_response(request)
            assert response is not None
            await self._send(response, gone, send)
        finally:
            watcher.cancel()
            body_file.close()
            # Slots (apps/jobs/leases.py) a response holds, released even when its
            # body never started (the client left first).
            for close in getattr(response, "async_closers", ()):
                try:
                    await close()
                except Exception:  # Redis unreachable: the slot expires on its own
                    logger.warning("could not release a stream slot", exc_info=True)

    async def _view_response(self, request: HttpRequest) -> HttpResponseBase:
        try:
            match = resolve(request.path_info, urlconf=settings.ROOT_URLCONF)
        except Resolver404:
            return not_found(request)
        if not iscoroutinefunction(match.func):
            # A `.../events` path some sync API view also matches (`/v1/models/events`):
            # this handler serves only the async views.
            return not_found(request)
        name_server_span(request.method or "", match.route)
        try:
            response: HttpResponseBase = await match.func(request, *match.args, **match.kwargs)
        except RequestDataTooBig:
            return too_large(settings.DATA_UPLOAD_MAX_MEMORY_SIZE, "DATA_UPLOAD_MAX_MEMORY_SIZE")
        except Exception:
            logger.exception("unhandled error in %s %s", request.method, request.path)
            sentry_sdk.capture_exception()
            return server_error(request)
        return response

    @staticmethod
    async def _watch_disconnect(receive: Any, gone: asyncio.Event) -> None:
        # With the body read, the next message can only be http.disconnect.
        while (await receive())["type"] != "http.disconnect":
            pass
        gone.set()

    async def _send(self, response: HttpResponseBase, gone: asyncio.Event, send: Any) -> None:
        if gone.is_set():
            return  # nobody to send it to
        headers = [(k.encode("ascii"), v.encode("latin1")) for k, v in response.items()]
        await send(
            {"type": "http.response.start", "status": response.status_code, "headers": headers + SECURITY_HEADERS}
        )
        if not isinstance(response, StreamingHttpResponse):
            await send({"type": "http.response.body", "body": response.content})  # type: ignore[attr-defined]
            return
        body = asyncio.ensure_future(self._send_body(response, send))
        disconnect = asyncio.ensure_future(gone.wait())
        try:
            await asyncio.wait({body, disconnect}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (body, disconnect):
                task.cancel()
        if body.done() and not body.cancelled():
            body.result()  # re-raise what the generator raised

    @staticmethod
    async def _send_body(response: StreamingHttpResponse, send: Any) -> None:
        async for chunk in response:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})


def too_large(limit: int, setting: str) -> JsonResponse:
    body = error_body(
        error_type="invalid_request_error",
        code="request_too_large",
        message=f"The request body is larger than {limit} bytes ({setting}).",
    )
    return JsonResponse(body, status=413)


# The largest request body per route, first matching path prefix wins, as
# (prefix, setting). An upload route would come first, with a larger setting of its
# own (a body read whole through `request.body` also meets Django's
# DATA_UPLOAD_MAX_MEMORY_SIZE; multipart file parts do not).
BODY_LIMITS: tuple[tuple[str, str], ...] = tuple((prefix, "API_MAX_BODY_BYTES") for prefix in API_PATH_PREFIXES)
DEFAULT_BODY_LIMIT = "DATA_UPLOAD_MAX_MEMORY_SIZE"  # the admin's forms, anything else


def body_limit(path: str) -> tuple[int, str]:
    """(bytes, the setting that sets them) for a request path."""
    setting = next((name for prefix, name in BODY_LIMITS if path.startswith(prefix)), DEFAULT_BODY_LIMIT)
    return int(getattr(settings, setting)), setting


class BodyLimit:
    """Refuses a body larger than its route's limit before the handler spools it:
    by Content-Length without reading it, or by the bytes counted as they arrive
    (a chunked body), answering 413 at once and telling the handler the client
    left (it then reads no further and answers nothing)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        limit, setting = body_limit(scope["path"])
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await self._refuse(send, limit, setting)
            return
        received = 0
        refused = False

        async def counting_receive() -> dict[str, Any]:
            nonlocal received, refused
            if refused:
                return {"type": "http.disconnect"}
            message: dict[str, Any] = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    refused = True
                    await self._refuse(send, limit, setting)
                    return {"type": "http.disconnect"}
            return message

        await self.app(scope, counting_receive, send)

    @staticmethod
    async def _refuse(send: Any, limit: int, setting: str) -> None:
        response = too_large(limit, setting)
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(response.content)).encode()),
            (b"connection", b"close"),  # the rest of the body is not read
            *SECURITY_HEADERS,
        ]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": response.content})


# Async views that await a job's stream or a provider on the event loop.
ASYNC_PATHS = frozenset({"/v1/chat/completions", "/v1/embeddings"})


def _is_stream(scope: Scope) -> bool:
    """Long-lived async responses (server-sent events, /v1 chat completions that
    follow a job's stream) take the StreamHandler, which runs async views natively
    and notices client disconnects; it answers 404 for any other path."""
    return bool(scope["path"].endswith("/events") or scope["path"] in ASYNC_PATHS)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin1"))
    return None


def _with_request_id(send: Any, request_id: bytes) -> Any:
    """`send` that adds X-Request-ID to the response: clients quote it, logs carry it."""

    async def sender(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", ()), (b"x-request-id", request_id)]}
        await send(message)

    return sender


class Router:
    def __init__(self) -> None:
        self.api = ApiHandler()
        self.streams = StreamHandler()
        self.django = ASGIHandler()
        self.limited_api, self.limited_streams = BodyLimit(self.api), BodyLimit(self.streams)
        self.limited_django = BodyLimit(self.django)
        warm_up()

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] == "http":
            # Each request is its own asyncio task: what is bound here is this request's
            # (and is copied into the thread that runs its view).
            request_id = context.request_id_from(_header(scope, b"x-request-id"))
            context.start(request_id=request_id)
            send = _with_request_id(send, request_id.encode("ascii"))
        if scope["type"] != "http":
            await self.django(scope, receive, send)
        elif scope["path"].startswith(API_PATH_PREFIXES):
            handler = self.limited_streams if _is_stream(scope) else self.limited_api
            await handler(scope, receive, send)
        else:
            await self.limited_django(scope, receive, send)

    async def _lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self.api.executor.shutdown(wait=False)
                await send({"type": "lifespan.shutdown.complete"})
                return


# With tracing on, OpenTelemetry's ASGI middleware opens each request's SERVER span
# (continuing the caller's `traceparent`) around the router.
application = traced_asgi(Router())
