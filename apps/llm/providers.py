"""Calls to OpenAI-compatible providers through the official `openai` SDK.

One SDK client per (base_url, key) per process: it owns an HTTP connection pool
and is thread-safe, so a worker's threads share warm connections to a provider.
SDK retries are off: retry policy belongs to the job (fallback chains), not to a
hidden loop inside the client.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

# httpx2 imports its transport (httpcore2) when the first client is built, and that
# import may run a subprocess: trio, when installed, probes libpthread with
# `ldconfig -p`. In a gevent worker, a subprocess started while other greenlets are
# mid-call forks them into the child, which runs them until it execs: they talked
# on the parent's Postgres and Redis sockets, and jobs were lost to replies read by
# the wrong side. Imported here, at process start, nothing else is running.
import httpcore2  # noqa: F401
import openai
from django.conf import settings

from apps.catalog.selectors import ModelSpec

# Keyless local servers (llama.cpp, Ollama, vLLM without --api-key) still need a
# non-empty string for the SDK's Authorization header.
logger = logging.getLogger(__name__)

NO_KEY = "not-needed"


class ProviderError(Exception):
    """A provider call that did not produce an answer. `error_type` is ours (stable
    for clients); `status` and `message` are the provider's own, kept verbatim."""

    def __init__(
        self,
        error_type: str,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        partial_output: str = "",
        retry_after: float | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.message = message
        self.status = status
        self.code = code
        self.param = param  # the request field the provider named, for errors the request caused
        # Text the provider had streamed before it failed: it generated (and bills)
        # those tokens even though the call produced no answer.
        self.partial_output = partial_output
        self.retry_after = retry_after  # seconds, from the provider's Retry-After

    @property
    def provider_trouble(self) -> bool:
        """The provider is failing or overloaded (5xx, 429, 408, 409, timeout, no
        connection, a broken stream): worth a retry, and counted by its breaker.
        A 4xx other than those means the request itself is wrong: no retry."""
        if self.error_type in ("provider_timeout", "provider_unreachable", "provider_stream_broken"):
            return True
        return self.status is not None and (self.status >= 500 or self.status in (408, 409, 429))

    @property
    def request_error(self) -> bool:
        """The request itself was refused (400, 413, 422): the caller gets the
        provider's status, code, param and message; no retry, no fallback (another
        model would refuse it too), and the breaker does not count it."""
        return self.error_type == "provider_error" and self.status in REQUEST_ERROR_STATUSES

    @property
    def misconfigured(self) -> bool:
        """The provider refused the platform (401, 403, 404: our key, our model
        name): the operator's to fix. Counted by the breaker, failed over."""
        return self.error_type == UPSTREAM_MISCONFIGURED


REQUEST_ERROR_STATUSES = frozenset({400, 413, 422})
MISCONFIGURED_STATUSES = frozenset({401, 403, 404})
UPSTREAM_MISCONFIGURED = "upstream_misconfigured"

# What a provider's message may say of the account the platform calls with.
_ACCOUNT_DETAILS = re.compile(r"\b(?:org|proj|user|sk|sess|acct)[-_](?=[A-Za-z0-9_-]*\d)[A-Za-z0-9_-]{6,}\b")


def retry_after(exc: openai.APIStatusError) -> float | None:
    """Seconds from `retry-after-ms` or `retry-after` (seconds; an HTTP date is ignored)."""
    headers = exc.response.headers
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value:
            try:
                return max(0.0, float(value) * scale)
            except ValueError:
                continue
    return None


class CallWatch:
    """What may stop a running call before it ends: its job's cancel (`stop` from a
    watcher that polls for it) or its deadline (epoch seconds). The stream loop
    checks `reason()` on every line; `stop` also interrupts the response's read
    (attached by the call), so a provider that is silent does not keep the call
    waiting."""

    __slots__ = ("_close", "_reason", "deadline", "key")

    def __init__(self, *, key: str = "", deadline: float | None = None) -> None:
        self.key = key  # what a watcher polls (the job's cancel flag)
        self.deadline = deadline
        self._reason: str | None = None
        self._close: Callable[[], None] | None = None

    def reason(self) -> str | None:
        """None while the call may go on; else "cancelled" or "timeout"."""
        if self._reason is None and self.deadline is not None and time.time() >= self.deadline:
            self.stop("timeout")
        return self._reason

    def stop(self, reason: str) -> None:
        if self._reason is not None:
            return
        self._reason = reason
        close = self._close
        if close is not None:
            # Closing a response that may be ending anyway: whatever it raises is moot.
            with contextlib.suppress(Exception):
                close()

    def attach(self, close: Callable[[], None] | None) -> None:
        self._close = close


class CallStopped(Exception):
    """A call stopped by its watch (cancelled, or past its job's deadline). Not a
    ProviderError: nothing retries it or falls back; the job ends, charged for what
    the call used (`partial_output`, and its input when `sent`)."""

    def __init__(self, reason: str, *, partial_output: str = "", sent: bool = False) -> None:
        super().__init__(f"the call was stopped ({reason})")
        self.reason = reason
        self.partial_output = partial_output
        self.sent = sent
        self.spec: ModelSpec | None = None  # the model called, and its step in the chain (set by the job)
        self.step = 0


def output_allowance(spec: ModelSpec, max_tokens: int | None) -> int:
    """The max_tokens a call to `spec` is sent, and what its hold counts: the
    request's (or the one its budget fitted), never above the model's output cap;
    the cap when there is none. Always sent, so the provider cannot bill more."""
    return min(int(max_tokens or spec.max_output_tokens), spec.max_output_tokens)


@dataclass(frozen=True, slots=True)
class ChatResult:
    output: str
    finish_reason: str
    input_tokens: int
    output_tokens: int
    usage_estimated: bool
    latency_ms: int
    response_model: str
    response_id: str
    first_chunk_s: float | None = None  # from sending the request to the first text
    tool_calls: list[dict[str, Any]] | None = None  # OpenAI's shape: [{id, type, function: {name, arguments}}]
    reasoning: str = ""  # a reasoning model's thinking, where its server streams it (reasoning_content)
    refusal: str = ""  # the model declined (structured outputs): its words, instead of content
    logprobs: list[dict[str, Any]] | None = None  # OpenAI's logprobs.content entries, when asked for
    cached_tokens: int = 0  # of input_tokens, what the provider's prompt cache served
    reasoning_tokens: int = 0  # of output_tokens, what a reasoning model thought
    service_tier: str = ""  # the tier the provider says served the call (OpenAI's), priced by the catalog
    system_fingerprint: str = ""  # the provider's backend configuration, as it sent it
    # n > 1: the choices after the first (the fields above), as a job keeps them:
    # [{index, output, tool_calls, refusal, logprobs, finish_reason}].
    choices: list[dict[str, Any]] | None = None


def provider_api_key(spec: ModelSpec) -> str:
    if not spec.api_key_env:
        return NO_KEY
    value = os.environ.get(spec.api_key_env, "")
    if not value:
        raise ProviderError(
            "provider_config_error",
            f"Model {spec.slug!r} reads its API key from ${spec.api_key_env}, which is not set for the worker.",
        )
    return value


@functools.lru_cache(maxsize=64)
def openai_client(base_url: str, api_key: str, timeout: float) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url, api_key=api_key, timeout=timeout, max_retries=0)


def provider_client(spec: ModelSpec) -> openai.OpenAI:
    return openai_client(spec.base_url, provider_api_key(spec), read_timeout(spec))


def read_timeout(spec: ModelSpec) -> float:
    """How long a call may wait for the provider's next bytes: LLM_REQUEST_TIMEOUT_SECONDS,
    meant for a stalled stream; a reasoning model may think silently for minutes
    before its first token, so it gets its whole job deadline (the job's own
    deadline watch still stops it there)."""
    timeout = float(settings.LLM_REQUEST_TIMEOUT_SECONDS)
    return max(timeout, float(spec.job_timeout)) if spec.supports_reasoning else timeout


# Async clients hold connections bound to one event loop: one per (loop, provider).
_async_clients: dict[tuple[int, str, str], openai.AsyncOpenAI] = {}


def provider_async_client(spec: ModelSpec) -> openai.AsyncOpenAI:
    import asyncio

    key = (id(asyncio.get_running_loop()), spec.base_url, provider_api_key(spec))
    client = _async_clients.get(key)
    if client is None:
        client = _async_clients[key] = openai.AsyncOpenAI(
            base_url=spec.base_url,
            api_key=key[2],
            timeout=float(settings.LLM_REQUEST_TIMEOUT_SECONDS),
            max_retries=0,
        )
    return client


async def embeddings_create(spec: ModelSpec, *, body: Mapping[str, Any]) -> dict[str, Any]:
    """Pass an embeddings request through to the model's provider and return its
    JSON. Awaited on the event loop: no thread waits on the provider. The model
    name is the catalog's; `encoding_format` defaults to float (the SDK would ask
    for base64, which not every server speaks)."""
    client = provider_async_client(spec)
    params = {key: value for key, value in body.items() if key in ("input", "dimensions", "user")}
    try:
        response = await client.embeddings.with_raw_response.create(
            model=spec.provider_model_name, encoding_format=body.get("encoding_format", "float"), **params
        )
    except openai.APITimeoutError as exc:
        raise ProviderError("provider_timeout", f"No answer from {spec.slug} within the timeout.") from exc
    except openai.APIConnectionError as exc:
        raise ProviderError("provider_unreachable", f"Cannot connect to {spec.base_url}: {exc}") from exc
    except openai.APIStatusError as exc:
        raise status_error(spec, exc) from exc
    data: dict[str, Any] = json.loads(response.content)
    data["model"] = spec.slug
    return data


def status_error(spec: ModelSpec, exc: openai.APIStatusError) -> ProviderError:
    """A provider's error status as ours. 401, 403 and 404 mean the platform's key
    or catalog entry is wrong: the caller learns only that (the provider's words
    may name our account), and the operator is alerted in the logs. Any other:
    the provider's status, code, param and message, account ids taken out."""
    status = exc.status_code
    if status in MISCONFIGURED_STATUSES:
        logger.error(
            "%s: its provider refused the platform's key or model name (HTTP %s): %s",
            spec.slug,
            status,
            _error_field(exc, "message") or exc.message,
            extra={"event": UPSTREAM_MISCONFIGURED, "model": spec.slug, "status": status},
        )
        return ProviderError(
            UPSTREAM_MISCONFIGURED,
            f"{spec.slug}'s provider refused the platform's configuration (HTTP {status}); the operator is alerted.",
            status=status,
            code=UPSTREAM_MISCONFIGURED,
        )
    message = _ACCOUNT_DETAILS.sub("[redacted]", _error_field(exc, "message") or exc.message)
    return ProviderError(
        "provider_error",
        message,
        status=status,
        code=_error_field(exc, "code"),
        param=_error_field(exc, "param"),
        retry_after=retry_after(exc),
    )


def _error_field(exc: openai.APIStatusError, name: str) -> str | None:
    """A field of the provider's error body (`{"error": {...}}` or the body itself)."""
    body = exc.body
    if isinstance(body, Mapping):
        error = body.get("error", body)
        if isinstance(error, Mapping) and error.get(name):
            return str(error[name])
    return None
