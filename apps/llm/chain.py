"""The call chain: the requested model, then each fallback, then (if it is last)
a cached answer; the first answer wins.

Each model gets its retries (exponential backoff with full jitter, or the
provider's Retry-After when that is longer) and is skipped while its shared
circuit breaker is open; a stream that broke mid-answer is reported to the host
(which charges and refunds what the provider generated) and the next step starts
over, after a `fallback` event that tells listeners to discard what they showed.
No model call starts after the deadline, and no retry once text has streamed. A
request the provider refuses as wrong (400, 413, 422) ends the chain: another
model would refuse it too.

The chain knows models, providers and breakers, nothing of jobs, budgets or
caches: what it needs from its caller (which models are available, where deltas
and events go, what a partial stream costs, the cached last resort, prices for
the span) comes through `ChainHost`. The durable lane's host is
`apps.jobs.execute.JobHost`.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from django.conf import settings
from django.utils import timezone

from apps.catalog.selectors import ModelSpec
from apps.observability import metrics
from apps.observability.genai import provider_call

from .breaker import breaker_allow, breaker_record
from .chat import chat_stream
from .providers import CallStopped, CallWatch, ChatResult, ProviderError

logger = logging.getLogger(__name__)

# The last step of a chain may be the tenant's semantic cache instead of a model.
SEMANTIC_CACHE = "semantic_cache"


@dataclass(frozen=True)
class Answered:
    """A model answered: which one, at which step (0: the requested model)."""

    spec: ModelSpec
    step: int
    result: ChatResult


@dataclass(frozen=True)
class LastResort:
    """Every model failed and the cache answered (the host's lookup)."""

    answer: Any  # what the host's cache keeps (apps.cache.exact.CachedAnswer)
    similarity: float
    tier: int
    priced_as: ModelSpec  # what the saved cost is priced at when the requested model is gone


Outcome = Answered | LastResort | ProviderError


class ChainHost(Protocol):
    """What the chain asks of its caller."""

    def available(self, step: int, name: str) -> ModelSpec | ProviderError:
        """The model to call at this step, or why it is skipped (gone, disabled,
        switched off)."""

    def delta(self, text: str) -> None:
        """Streamed text, for the listeners."""

    def part(self, part: dict[str, Any]) -> None:
        """A streamed piece other than text (a tool call's, a refusal's, logprobs),
        typed, for the listeners."""

    def event(self, event: dict[str, Any]) -> None:
        """A chain event (a `fallback`), for the listeners."""

    def partial(self, *, spec: ModelSpec, output: str, step: int) -> None:
        """A call that failed after the provider generated `output`."""

    def last_resort(self, *, tier: int) -> LastResort | None:
        """The cached answer closest to the request, if one is close enough."""

    def price(self, spec: ModelSpec, result: ChatResult) -> int:
        """What the answer costs, in micro-dollars (for its span)."""

    def span_fields(self, tier: int) -> dict[str, Any] | None:
        """Our attributes on the provider call's span (None: not traced)."""


@dataclass
class ChainCall:
    """One run of the chain. `attempt_log` gets one entry per step tried."""

    steps: Sequence[str]  # model slugs; the first is the requested model
    messages: list[dict[str, Any]]
    params: dict[str, Any]
    deadline: datetime
    watch: CallWatch | None = None
    cached_allowed: bool = True  # False: the request asked for no cached answer
    label: str = ""  # for log lines (the job's id)
    attempt_log: list[dict[str, Any]] = field(default_factory=list)


def chain_run(call: ChainCall, host: ChainHost) -> Outcome:
    """Try each step in order (see the module's docstring): the first answer, or
    the last error when every step failed. A call stopped by `call.watch`
    (cancel, deadline) ends the chain: CallStopped, with its spec and step."""
    failure: ProviderError | None = None
    previous = ""
    for step, name in enumerate(call.steps):
        if name == SEMANTIC_CACHE:  # a local lookup: worth it even past the deadline
            if not call.cached_allowed:
                continue
            if failure is not None:
                _fallback(host, previous, name, failure)
            started = timezone.now()
            found = host.last_resort(tier=step + 1)
            miss = None if found else ProviderError("cache_miss", "No cached answer was close enough.")
            call.attempt_log.append(attempt(SEMANTIC_CACHE, started, "succeeded" if found else "failed", 0, miss))
            if found is not None:
                return found
            continue
        if step and timezone.now() >= call.deadline:
            continue  # no model call starts after the deadline (a later semantic step still may)
        spec = host.available(step, name)
        if isinstance(spec, ProviderError):
            failure = spec
            call.attempt_log.append(attempt(name, timezone.now(), "skipped", 0, failure))
            previous = name
            continue
        if failure is not None:
            _fallback(host, previous, name, failure)
        previous = name
        try:
            return Answered(spec, step, call_with_retries(call, host, spec=spec, tier=step + 1))
        except CallStopped as stop:
            stop.spec, stop.step = spec, step
            raise
        except ProviderError as exc:
            if exc.partial_output:
                host.partial(spec=spec, output=exc.partial_output, step=step)
            if exc.request_error:  # the request is wrong: another model would refuse it too
                return exc
            failure = exc
    return failure or ProviderError("deadline_exceeded", "The job's deadline passed before any model answered.")


def _fallback(host: ChainHost, source: str, target: str, failure: ProviderError) -> None:
    host.event({"type": "fallback", "from": source, "to": target, "reason": failure.error_type})
    metrics.record_fallback(source, target, failure.error_type)


def call_with_retries(call: ChainCall, host: ChainHost, *, spec: ModelSpec, tier: int = 1) -> ChatResult:
    """Call one model, retrying what failed for the provider's reasons (5xx, 429,
    timeouts, no connection); never after the deadline, and never once text has
    streamed (the listeners have it: a retry would repeat it). A model whose
    circuit breaker is open is skipped without a call. The attempt, with its
    retries, is appended to `call.attempt_log`."""
    started = timezone.now()
    retries = 0
    span_fields = host.span_fields(tier)  # worked out once for every attempt
    while True:
        if not breaker_allow(spec.slug):
            exc = ProviderError(
                "circuit_open",
                f"{spec.slug} is failing; its circuit breaker is open, so it was skipped without a call.",
            )
            call.attempt_log.append(attempt(spec.slug, started, "skipped", retries, exc))
            raise exc
        try:
            with provider_call(
                spec, operation="chat", params=call.params, stream=True, job=span_fields, messages=call.messages
            ) as traced:
                result = chat_stream(
                    spec,
                    messages=call.messages,
                    params=call.params,
                    on_delta=host.delta,
                    on_part=host.part,
                    watch=call.watch,
                )
                traced.succeeded(result, cost_micros=host.price(spec, result))
        except CallStopped as stop:  # cancelled, or the deadline: no retry, no fallback
            stopped = ProviderError(stop.reason, str(stop))
            call.attempt_log.append(attempt(spec.slug, started, "stopped", retries, stopped))
            raise
        except ProviderError as exc:
            breaker_record(spec.slug, ok=not (exc.provider_trouble or exc.misconfigured), status=exc.status)
            wait = backoff(retries, exc.retry_after)
            retry = exc.provider_trouble and not exc.partial_output and retries < settings.LLM_MAX_RETRIES
            if not retry or timezone.now() + timedelta(seconds=wait) >= call.deadline:
                call.attempt_log.append(attempt(spec.slug, started, "failed", retries, exc))
                raise
            logger.info(
                "job %s: %s failed (%s); retry %d in %.2fs", call.label, spec.slug, exc.error_type, retries + 1, wait
            )
            time.sleep(wait)
            retries += 1
            continue
        breaker_record(spec.slug, ok=True)
        call.attempt_log.append(attempt(spec.slug, started, "succeeded", retries, None))
        return result


def backoff(retries: int, retry_after: float | None) -> float:
    """Full jitter on an exponential ceiling; at least the provider's Retry-After."""
    ceiling = min(settings.LLM_RETRY_MAX_SECONDS, settings.LLM_RETRY_BASE_SECONDS * 2**retries)
    wait = random.uniform(0, ceiling)
    return max(wait, retry_after) if retry_after is not None else wait


def attempt(model: str, started: datetime, outcome: str, retries: int, exc: ProviderError | None) -> dict[str, Any]:
    """One entry of an attempt log (a job's `attempt_log`, shown by the jobs API)."""
    return {
        "model": model,
        "started_at": started.isoformat(),
        "ended_at": timezone.now().isoformat(),
        "outcome": outcome,
        "error_type": exc.error_type if exc else None,
        "provider_status": exc.status if exc else None,
        "message": exc.message if exc else None,
        "retries": retries,
    }


def failure_summary(attempt_log: Sequence[dict[str, Any]], last: ProviderError) -> str:
    """The last error's message, and what every step did."""
    steps = [f"{a['model']}: {a['outcome']} ({a['error_type']})" for a in attempt_log if a["outcome"] != "succeeded"]
    if len(steps) <= 1:
        return last.message
    return f"{last.message} Every step failed: {'; '.join(steps)}."
