"""One provider call: a CLIENT span named `{operation} {model}` with the GenAI
semantic-convention attributes, and the GenAI metrics (tokens, duration, time to
first chunk), whatever the outcome.

    with provider_call(spec, operation="chat", params=params, job=fields) as call:
        result = chat_stream(...)
        call.succeeded(result, cost_micros=cost)

A ProviderError raised inside the block is recorded (`error.type`, outcome) and
re-raised. Prompts and answers are recorded only with
OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from apps.catalog.selectors import ModelSpec
from apps.llm.providers import ChatResult, ProviderError

from . import metrics
from .tracing import capture_content, tracer, tracing_enabled


class ProviderCall:
    def __init__(self, spec: ModelSpec, operation: str, span: Span | None) -> None:
        self.spec = spec
        self.operation = operation
        self.span = span
        self.labels = (operation, spec.provider, spec.provider_model_name, spec.slug)

    def succeeded(
        self,
        result: ChatResult | None = None,
        *,
        input_tokens: int | None = None,
        output_tokens: int | None = None,
        response_model: str = "",
        cost_micros: int | None = None,
    ) -> None:
        """Record the answer's usage (a chat result, or the counts of an embeddings call)."""
        if result is not None:
            input_tokens, output_tokens = result.input_tokens, result.output_tokens
            response_model = result.response_model
        if metrics.ENABLED:
            for kind, count in (("input", input_tokens), ("output", output_tokens)):
                if count is not None:
                    metrics.TOKEN_USAGE.labels(*self.labels, kind).observe(count)
            if result is not None and result.first_chunk_s is not None:
                metrics.TIME_TO_FIRST_CHUNK.labels(*self.labels).observe(result.first_chunk_s)
        span = self.span
        if span is None or not span.is_recording():
            return
        attributes: dict[str, Any] = {"gen_ai.response.model": response_model or self.spec.provider_model_name}
        if input_tokens is not None:
            attributes["gen_ai.usage.input_tokens"] = input_tokens
        if output_tokens is not None:
            attributes["gen_ai.usage.output_tokens"] = output_tokens
        if cost_micros is not None:
            attributes["aip.cost_usd"] = metrics.usd(cost_micros)
        if result is not None:
            attributes["gen_ai.response.id"] = result.response_id
            attributes["gen_ai.response.finish_reasons"] = [result.finish_reason]
            attributes["aip.usage_estimated"] = result.usage_estimated
            if capture_content():
                attributes["gen_ai.output.messages"] = json.dumps(
                    [
                        {
                            "role": "assistant",
                            "parts": [{"type": "text", "content": result.output}],
                            "finish_reason": result.finish_reason,
                        }
                    ]
                )
        span.set_attributes(attributes)


def _server(base_url: str) -> dict[str, Any]:
    parts = urlsplit(base_url)
    found: dict[str, Any] = {}
    if parts.hostname:
        found["server.address"] = parts.hostname
    port = parts.port or {"https": 443, "http": 80}.get(parts.scheme)
    if port:
        found["server.port"] = port
    return found


def _request_attributes(
    spec: ModelSpec,
    operation: str,
    params: Mapping[str, Any],
    stream: bool,
    job: Mapping[str, Any],
    messages: Sequence[Mapping[str, Any]] | None,
) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": operation,
        "gen_ai.provider.name": spec.provider,
        "gen_ai.request.model": spec.provider_model_name,
        "aip.model": spec.slug,
        **_server(spec.base_url),
    }
    if operation == "chat":
        attributes["gen_ai.request.stream"] = stream
    max_tokens = params.get("max_tokens", params.get("max_completion_tokens"))
    if isinstance(max_tokens, int):
        attributes["gen_ai.request.max_tokens"] = max_tokens
    for name in ("temperature", "top_p"):
        value = params.get(name)
        if isinstance(value, int | float) and not isinstance(value, bool):
            attributes[f"gen_ai.request.{name}"] = float(value)
    for key, value in job.items():
        if value is not None:
            attributes[f"aip.{key}"] = value if isinstance(value, int | float | str | bool) else str(value)
    if messages is not None and capture_content():
        attributes["gen_ai.input.messages"] = json.dumps(
            [{"role": m.get("role"), "parts": [{"type": "text", "content": m.get("content")}]} for m in messages]
        )
    return attributes


@contextlib.contextmanager
def provider_call(
    spec: ModelSpec,
    *,
    operation: str,
    params: Mapping[str, Any] | None = None,
    stream: bool = False,
    job: Mapping[str, Any] | None = None,
    messages: Sequence[Mapping[str, Any]] | None = None,
) -> Iterator[ProviderCall]:
    """`job`: our attributes for the span, recorded as `aip.<key>` (tenant, user,
    job_id, cache, fallback_tier)."""
    started = time.perf_counter()
    span: Span | None = None
    cm: contextlib.AbstractContextManager[Span] | None = None
    if tracing_enabled():
        cm = tracer().start_as_current_span(
            f"{operation} {spec.provider_model_name}",
            kind=SpanKind.CLIENT,
            attributes=_request_attributes(spec, operation, params or {}, stream, job or {}, messages),
            record_exception=False,
            set_status_on_exception=False,
        )
        span = cm.__enter__()
    call = ProviderCall(spec, operation, span)
    outcome = "ok"
    try:
        yield call
    except ProviderError as exc:
        outcome = exc.error_type
        if span is not None:
            span.set_attribute("error.type", exc.error_type)
            if exc.status is not None:
                span.set_attribute("http.response.status_code", exc.status)
            span.set_status(Status(StatusCode.ERROR, exc.message[:500]))
        raise
    except BaseException as exc:
        outcome = type(exc).__name__
        if span is not None:
            span.set_attribute("error.type", type(exc).__qualname__)
            span.set_status(Status(StatusCode.ERROR))
        raise
    finally:
        if metrics.ENABLED:
            metrics.OPERATION_DURATION.labels(*call.labels, outcome).observe(time.perf_counter() - started)
        if cm is not None:
            cm.__exit__(None, None, None)
