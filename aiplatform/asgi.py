"""ASGI entry point: one app, two Django handlers.

The API's views are sync (DRF) and short. Django's stock ASGI handler serves a
sync view through a dozen async<->thread handoffs (middleware hooks, signals, a
new executor thread per request) that cost several times the view's own CPU.
`ApiHandler` runs the whole request (signals, sync middleware chain, view, body
rendering, close) in ONE call on a reused thread pool, then sends the bytes from
the event loop. Everything else (admin, OpenAPI docs, static files, and later the
async event streams) goes through Django's stock handler, which streams and
handles disconnects.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import django
from django.core.exceptions import RequestAborted
from django.core.handlers.asgi import ASGIHandler, ASGIRequest, get_script_prefix
from django.core.handlers.base import BaseHandler
from django.core.signals import request_started
from django.http import HttpResponse, HttpResponseBase
from django.urls import set_script_prefix

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "aiplatform.settings.dev")
django.setup(set_prefix=False)

from django.conf import settings  # noqa: E402

from apps.llm.tokens import warm_up  # noqa: E402
from apps.tenants.middleware import API_PATH_PREFIXES  # noqa: E402

Scope = dict[str, Any]


class ApiHandler(ASGIHandler):
    def __init__(self, *, threads: int) -> None:
        BaseHandler.__init__(self)
        self.load_middleware(is_async=False)
        # Reused threads: Django's ORM is sync, and a DB or broker round trip must
        # not block the event loop. Each request runs in its own context, so its
        # database connection wrapper (and tenant schema) is its own.
        self.executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="api")

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


# Async views that await a job's stream or a provider on the event loop.
ASYNC_PATHS = frozenset({"/v1/chat/completions", "/v1/embeddings"})


def _is_stream(scope: Scope) -> bool:
    """Long-lived async responses (server-sent events, /v1 chat completions that
    follow a job's stream) take Django's stock handler, which runs async views
    natively and notices client disconnects."""
    return bool(scope["path"].endswith("/events") or scope["path"] in ASYNC_PATHS)


class Router:
    def __init__(self) -> None:
        self.api = ApiHandler(threads=settings.WEB_THREADS)
        self.django = ASGIHandler()
        warm_up()

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "http" and scope["path"].startswith(API_PATH_PREFIXES) and not _is_stream(scope):
            await self.api(scope, receive, send)
        else:
            await self.django(scope, receive, send)

    async def _lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self.api.executor.shutdown(wait=False)
                await send({"type": "lifespan.shutdown.complete"})
                return


application = Router()
