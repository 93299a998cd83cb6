"""The web process's thread pool for sync work (the ORM, the broker) started from
the event loop.

One pool of reused threads, WEB_THREADS wide. asgiref's `sync_to_async` would
either funnel every call through one shared thread (`thread_sensitive=True`
outside a request context) or, under Django's stock handler, start a thread per
request; both showed up as hundreds of milliseconds of queueing under load.

Database connections are per thread (Django's are thread-critical), so a call
must not assume the tenant a previous call on the same thread selected: every
function run here selects its tenant itself, and returns its connection to the
pool (`release_connection`) when it will not need it again soon.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

from django.conf import settings

P = ParamSpec("P")
R = TypeVar("R")


@functools.cache
def web_executor() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=settings.WEB_THREADS, thread_name_prefix="web")


async def in_thread(fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
    """Run a sync function on the web thread pool, in a copy of the caller's context."""
    context = contextvars.copy_context()
    call = functools.partial(context.run, fn, *args, **kwargs)
    return await asyncio.get_running_loop().run_in_executor(web_executor(), call)
