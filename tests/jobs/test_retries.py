"""Retries and circuit breakers against the real worker and the HTTP upstream:
provider trouble (5xx, 429) is retried with backoff, Retry-After is honoured, a
bad request is not retried, a model whose breaker is open is skipped without a
call and comes back after the cooldown, and no attempt starts after the deadline."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

from apps.llm.breaker import breaker_state
from tests.support import Personas, job_until_final

BODY = {"model": "local-small", "messages": [{"role": "user", "content": "retry me"}]}


def _calls(upstream: Any) -> int:
    return int(upstream.stats()["chat_per_model"].get("local-small", 0))


def _run(personas: Personas) -> dict[str, Any]:
    client = personas.alice.client()
    return job_until_final(client, client.post("/api/v1/jobs", BODY, format="json").json()["id"], timeout=30)


def _seconds(job: dict[str, Any]) -> float:
    started, finished = (datetime.fromisoformat(job[k].replace("Z", "+00:00")) for k in ("started_at", "finished_at"))
    return (finished - started).total_seconds()


def test_a_server_error_is_retried_and_the_attempt_lists_it(worker, committed_personas: Personas, upstream, settings):
    settings.LLM_MAX_RETRIES = 2
    settings.LLM_RETRY_BASE_SECONDS = 0.05
    upstream.add_faults({"model": "local-small", "status": 500, "message": "flaky", "times": 2})
    job = _run(committed_personas)
    assert job["status"] == "succeeded"
    assert _calls(upstream) == 3
    [attempt] = job["attempts"]
    assert attempt["model"] == "local-small" and attempt["outcome"] == "succeeded" and attempt["retries"] == 2


def test_retry_after_is_honoured(worker, committed_personas: Personas, upstream, settings):
    settings.LLM_MAX_RETRIES = 1
    settings.LLM_RETRY_BASE_SECONDS = 0.01  # the backoff alone would retry at once
    upstream.add_faults({"model": "local-small", "status": 429, "retry_after": 1})
    job = _run(committed_personas)
    assert job["status"] == "succeeded" and job["attempts"][0]["retries"] == 1
    assert _seconds(job) >= 1.0  # about a second, not sooner
    assert _seconds(job) < 3.0


def test_a_bad_request_is_not_retried(worker, committed_personas: Personas, upstream, settings):
    settings.LLM_MAX_RETRIES = 3
    upstream.add_faults({"model": "local-small", "status": 400, "message": "bad field"})
    job = _run(committed_personas)
    assert job["status"] == "failed"
    assert _calls(upstream) == 1
    assert job["attempts"][0]["outcome"] == "failed" and job["attempts"][0]["retries"] == 0
    assert job["attempts"][0]["provider_status"] == 400


def test_an_open_breaker_skips_the_model_without_a_call_then_recovers(
    worker, committed_personas: Personas, upstream, settings
):
    settings.BREAKER_FAILURES = 2
    settings.BREAKER_COOLDOWN_SECONDS = 2
    upstream.add_faults({"model": "local-small", "status": 503, "message": "down", "times": 2})
    assert _run(committed_personas)["status"] == "failed"
    assert _run(committed_personas)["status"] == "failed"  # the second failure opens the breaker
    assert _calls(upstream) == 2
    skipped = _run(committed_personas)
    assert skipped["status"] == "failed" and skipped["error"]["type"] == "circuit_open"
    assert skipped["attempts"][0]["outcome"] == "skipped"
    assert _calls(upstream) == 2  # no network call while open
    assert breaker_state("local-small").state == "open"  # what the operator admin shows
    time.sleep(2.1)
    probe = _run(committed_personas)  # half-open: one probe goes through and closes it
    assert probe["status"] == "succeeded"
    assert _run(committed_personas)["status"] == "succeeded"
    assert _calls(upstream) == 4


def test_no_attempt_starts_after_the_deadline(worker, committed_personas: Personas, upstream, settings):
    settings.LLM_MAX_RETRIES = 50
    settings.LLM_RETRY_BASE_SECONDS = 0.05
    settings.LLM_RETRY_MAX_SECONDS = 0.1
    settings.JOB_DEADLINE_SECONDS = 1
    upstream.configure(latency_ms=300)  # one attempt's duration
    upstream.add_faults({"model": "local-small", "status": 500, "message": "down", "times": -1})
    job = _run(committed_personas)
    assert job["status"] == "failed"
    assert job["attempts"][0]["retries"] >= 1
    assert _seconds(job) <= 1 + 0.3 + 0.5  # the deadline, one attempt, and slack for the test machine


def test_failures_that_are_a_small_share_of_calls_do_not_open_the_breaker(
    worker, committed_personas: Personas, upstream, settings
):
    settings.BREAKER_FAILURES = 2
    settings.BREAKER_FAILURE_RATIO = 0.5
    for _ in range(4):
        assert _run(committed_personas)["status"] == "succeeded"
    upstream.add_faults({"model": "local-small", "status": 500, "message": "blip", "times": 2})
    assert _run(committed_personas)["status"] == "failed"
    assert _run(committed_personas)["status"] == "failed"  # 2 failures, but 2 of 6 calls
    assert breaker_state("local-small").state == "closed"
    assert _run(committed_personas)["status"] == "succeeded"
    assert _calls(upstream) == 7
