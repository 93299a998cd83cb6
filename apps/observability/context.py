"""Who and what the current work is for, bound once and read by every log line,
span and Sentry event.

A web request binds `request_id` (router), then `tenant` and `user` (when its key
is checked), then `job_id` and `model` (when the job is stored). A worker binds
them from the task's message before the task runs (see `celery.py`) and unbinds
them after. Values live in a context variable: each request's context is its own
(asyncio task, executor thread context, gevent greenlet) and nothing leaks from
one request or task to the next.
"""

from __future__ import annotations

import contextlib
import re
import uuid
from collections.abc import Iterator, Mapping
from contextvars import ContextVar, Token
from types import MappingProxyType
from typing import Any

from opentelemetry import trace

FIELDS = ("request_id", "job_id", "tenant", "user", "model")

_EMPTY: Mapping[str, Any] = MappingProxyType({})
_context: ContextVar[Mapping[str, Any]] = ContextVar("aip_context", default=_EMPTY)

# An incoming X-Request-ID is kept when it is plain (a load balancer's or a
# client's id); anything else is replaced, so ids never carry injected text.
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def request_id_from(header: str | None) -> str:
    if header and _REQUEST_ID.match(header):
        return header
    return uuid.uuid4().hex


def bind(**fields: Any) -> None:
    """Add fields (None values are skipped) to the current context, and to the
    current span as `aip.<field>`."""
    values = {key: value for key, value in fields.items() if value is not None}
    if not values:
        return
    _context.set(MappingProxyType({**_context.get(), **values}))
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attributes({f"aip.{key}": str(value) for key, value in values.items()})


def annotate_span() -> None:
    """Put every bound field on the current span (one started after they were bound)."""
    span = trace.get_current_span()
    fields = _context.get()
    if fields and span.is_recording():
        span.set_attributes({f"aip.{key}": str(value) for key, value in fields.items()})


def current() -> Mapping[str, Any]:
    return _context.get()


def start(**fields: Any) -> Token[Mapping[str, Any]]:
    """Replace the whole context (a task starting in a reused thread); `end` undoes it."""
    return _context.set(MappingProxyType({key: value for key, value in fields.items() if value is not None}))


def end(token: Token[Mapping[str, Any]]) -> None:
    _context.reset(token)


@contextlib.contextmanager
def bound(**fields: Any) -> Iterator[None]:
    token = _context.set(_context.get())
    bind(**fields)
    try:
        yield
    finally:
        _context.reset(token)
