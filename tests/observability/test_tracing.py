"""One trace per request: the web's SERVER span, the Celery publish and the
worker's task span, and the provider call as a GenAI CLIENT span, all in the
caller's trace; read from the in-memory exporter the suite installs (conftest)."""

from __future__ import annotations

import json
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind, StatusCode

from apps.controls.models import FallbackPolicy
from tests.conftest import SPANS
from tests.support import Personas, http_client, job_until_final, wait_for

PROMPT = "a prompt nobody else may read"
BODY = {"model": "local-small", "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 64, "temperature": 0.2}
CALLER_TRACE = 0x4BF92F3577B34DA6A3CE929D0E0E4736
CALLER_SPAN = 0x00F067AA0BA902B7


def _finished(predicate: Any) -> list[ReadableSpan]:
    return wait_for(lambda: [s for s in SPANS.get_finished_spans() if predicate(s)] or None)


def _ancestors(span: ReadableSpan, by_id: dict[int, ReadableSpan]) -> list[int]:
    found = []
    parent = span.parent
    while parent is not None:
        found.append(parent.span_id)
        above = by_id.get(parent.span_id)
        parent = above.parent if above is not None else None
    return found


def attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def _chat_spans() -> list[ReadableSpan]:
    return [s for s in SPANS.get_finished_spans() if s.name.startswith("chat ")]


def test_a_job_is_one_trace_from_the_web_to_the_provider(platform_server, worker, committed_personas: Personas):
    alice = committed_personas.alice
    traceparent = f"00-{CALLER_TRACE:032x}-{CALLER_SPAN:016x}-01"
    with http_client(platform_server, alice.key) as client:
        created = client.post("/api/v1/jobs", json=BODY, headers={"traceparent": traceparent})
        assert created.status_code == 202, created.text
        job = job_until_final(client, created.json()["id"])
    assert job["status"] == "succeeded"
    request_id = created.headers["x-request-id"]

    (genai,) = _finished(lambda s: s.name.startswith("chat "))
    (task,) = _finished(lambda s: s.name == "run/jobs.run")
    spans = SPANS.get_finished_spans()
    by_id = {s.context.span_id: s for s in spans}
    (server,) = [s for s in spans if s.kind == SpanKind.SERVER and s.name == "POST /api/v1/jobs"]

    # One trace, continuing the caller's; the web span is above the worker's and the call's.
    assert {server.context.trace_id, task.context.trace_id, genai.context.trace_id} == {CALLER_TRACE}
    assert server.parent is not None and server.parent.span_id == CALLER_SPAN
    assert server.context.span_id in _ancestors(task, by_id)
    assert task.context.span_id in _ancestors(genai, by_id)
    assert server.context.span_id in _ancestors(genai, by_id)
    assert attrs(server)["http.route"] == "/api/v1/jobs"
    assert attrs(server)["aip.tenant"] == "acme" and attrs(server)["aip.job_id"] == job["id"]
    assert attrs(task)["aip.job_id"] == job["id"] and attrs(task)["aip.request_id"] == request_id

    # The provider call, in the GenAI conventions.
    assert genai.kind == SpanKind.CLIENT
    assert genai.name == "chat local-small"
    attributes = attrs(genai)
    assert attributes["gen_ai.operation.name"] == "chat"
    assert attributes["gen_ai.provider.name"] == "openai"
    assert attributes["gen_ai.request.model"] == "local-small"
    assert attributes["gen_ai.request.max_tokens"] == 64
    assert attributes["gen_ai.request.temperature"] == 0.2
    assert attributes["gen_ai.request.stream"] is True
    assert attributes["gen_ai.response.model"] == "local-small"  # what the upstream says it ran
    assert attributes["gen_ai.response.id"]
    assert list(attributes["gen_ai.response.finish_reasons"]) == [job["finish_reason"]]
    assert attributes["gen_ai.usage.input_tokens"] == job["usage"]["input_tokens"]
    assert attributes["gen_ai.usage.output_tokens"] == job["usage"]["output_tokens"]
    assert attributes["server.address"] == "127.0.0.1"
    assert attributes["aip.tenant"] == "acme"
    assert attributes["aip.user"] == alice.user_id
    assert attributes["aip.job_id"] == job["id"]
    assert attributes["aip.cost_usd"] > 0
    assert attributes["aip.cache"] == "off"  # acme has no cache policy
    assert attributes["aip.fallback_tier"] == 1
    assert "error.type" not in attributes
    # Prompts and answers are not recorded unless the operator opts in.
    recorded = json.dumps([dict(s.attributes or {}) for s in spans])
    assert PROMPT not in recorded and job["output"] not in recorded


def test_a_failed_call_records_its_error_type(worker, committed_personas: Personas, upstream):
    upstream.add_faults({"model": "local-small", "status": 503, "message": "overloaded"})
    client = committed_personas.alice.client()
    job = job_until_final(client, client.post("/api/v1/jobs", BODY, format="json").json()["id"])
    assert job["status"] == "failed"
    (genai,) = _finished(lambda s: s.name.startswith("chat "))
    assert attrs(genai)["error.type"] == "provider_error"
    assert attrs(genai)["http.response.status_code"] == 503
    assert genai.status.status_code == StatusCode.ERROR
    assert "gen_ai.usage.input_tokens" not in attrs(genai)


def test_prompts_are_recorded_only_when_the_operator_opts_in(worker, committed_personas: Personas, monkeypatch):
    monkeypatch.setenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "true")
    client = committed_personas.alice.client()
    job = job_until_final(client, client.post("/api/v1/jobs", BODY, format="json").json()["id"])
    (genai,) = _finished(lambda s: s.name.startswith("chat "))
    sent = json.loads(attrs(genai)["gen_ai.input.messages"])
    answered = json.loads(attrs(genai)["gen_ai.output.messages"])
    assert sent == [{"role": "user", "parts": [{"type": "text", "content": PROMPT}]}]
    assert answered[0]["parts"][0]["content"] == job["output"]


def test_each_step_of_a_fallback_chain_is_its_own_call(worker, committed_personas: Personas, upstream):
    FallbackPolicy.objects.create(tier="premium", chain=["premium-large", "local-small"])
    upstream.add_faults({"model": "premium-large", "status": 500, "message": "down"})
    client = committed_personas.carol.client()  # premium tier
    body = {**BODY, "model": "premium-large"}
    job = job_until_final(client, client.post("/api/v1/jobs", body, format="json").json()["id"])
    assert job["status"] == "succeeded"
    calls = wait_for(lambda: len(_chat_spans()) == 2 and _chat_spans())
    first, second = sorted(calls, key=lambda s: s.start_time or 0)
    assert (first.name, attrs(first)["aip.fallback_tier"], attrs(first)["error.type"]) == (
        "chat premium-large",
        1,
        "provider_error",
    )
    assert (second.name, attrs(second)["aip.fallback_tier"]) == ("chat local-small", 2)
    assert first.context.trace_id == second.context.trace_id
