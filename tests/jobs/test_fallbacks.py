"""Fallback chains against the real worker and upstream (faults injected there):
premium -> standard -> the tenant's semantic cache, a `fallback` event when a
stream breaks mid-answer, each attempt listed on the job and charged per call."""

from __future__ import annotations

import json
from typing import Any

import redis
from django.conf import settings
from django_tenants.utils import tenant_context

from apps.billing.models import LedgerEntry, LedgerKind
from apps.controls.models import CachePolicy, FallbackPolicy
from apps.jobs.events import stream_key
from tests.support import Personas, http_client, job_until_final, sse_events

ASK = {"model": "premium-large", "messages": [{"role": "user", "content": "fall back please"}]}


def _premium_chain(*, semantic: bool = False) -> None:
    FallbackPolicy.objects.create(tier="premium", chain=["premium-large", "local-small"], semantic_cache_last=semantic)


def _run(client: Any, body: dict[str, Any]) -> dict[str, Any]:
    response = client.post("/api/v1/jobs", body, format="json")
    assert response.status_code == 202, response.json()
    return job_until_final(client, response.json()["id"], timeout=30)


def test_a_failing_premium_model_falls_to_the_standard_one(worker, committed_personas: Personas, upstream):
    _premium_chain()
    carol = committed_personas.carol  # premium tier
    upstream.add_faults({"model": "premium-large", "status": 500, "message": "premium is down"})
    job = _run(carol.client(), ASK)
    assert job["status"] == "succeeded"
    assert job["model"] == "premium-large" and job["answered_by"] == "local-small" and job["tier"] == 2
    assert job["fallbacks"] == ["local-small"]
    assert [(a["model"], a["outcome"]) for a in job["attempts"]] == [
        ("premium-large", "failed"),
        ("local-small", "succeeded"),
    ]
    assert job["attempts"][0]["provider_status"] == 500
    with tenant_context(carol.tenant):
        charges = list(LedgerEntry.objects.filter(job_id=job["id"]).values_list("kind", "model", "call"))
    assert charges == [(LedgerKind.CHARGE, "local-small", 1)]  # the failed call generated nothing to bill


def test_when_every_model_fails_the_semantic_cache_answers_else_every_attempt_is_listed(
    worker, committed_personas: Personas, upstream
):
    carol = committed_personas.carol
    _premium_chain(semantic=True)
    CachePolicy.objects.create(
        tenant=carol.tenant, embedder_base_url=upstream.base_url, embedder_model="embed-small", embedder_dimensions=384
    )
    client = carol.client()
    # No entry yet: the job fails, and says what each step did.
    upstream.add_faults(
        {"model": "premium-large", "status": 503, "message": "down"}, {"model": "local-small", "status": 503}
    )
    failed = _run(client, ASK)
    assert failed["status"] == "failed"
    assert [(a["model"], a["outcome"]) for a in failed["attempts"]] == [
        ("premium-large", "failed"),
        ("local-small", "failed"),
        ("semantic_cache", "failed"),
    ]
    assert "Every step failed" in failed["error"]["message"]
    # An answer the semantic cache keeps (the request opts in), then both models fail.
    answered = _run(client, {**ASK, "cache": {"semantic": True}})
    assert answered["status"] == "succeeded" and answered["cached"] is None
    upstream.add_faults(
        {"model": "premium-large", "status": 503, "message": "down"}, {"model": "local-small", "status": 503}
    )
    rescued = _run(client, ASK)
    assert rescued["status"] == "succeeded"
    assert rescued["cached"] == "semantic" and rescued["answered_by"] == "semantic_cache" and rescued["tier"] == 3
    assert rescued["output"] == answered["output"]
    stream: Any = redis.Redis.from_url(settings.REDIS_URL).xrange(stream_key(schema="globex", job_id=rescued["id"]))
    events = [json.loads(fields[b"d"]) for _, fields in stream]
    assert [e["type"] for e in events] == ["fallback", "fallback", "delta", "usage", "done"]
    assert events[1] == {"type": "fallback", "from": "local-small", "to": "semantic_cache", "reason": "provider_error"}


def test_a_stream_cut_mid_answer_falls_over_with_a_fallback_event(
    platform_server, worker, committed_personas: Personas, upstream
):
    _premium_chain()
    carol = committed_personas.carol
    upstream.add_faults({"model": "premium-large", "kind": "cut_stream", "after_chunks": 3})
    with http_client(platform_server, carol.key) as live:
        job_id = live.post("/api/v1/jobs", json=ASK).json()["id"]
        job = job_until_final(carol.client(), job_id, timeout=30)
        with live.stream("GET", f"/api/v1/jobs/{job_id}/events") as response:
            events = [event for _, event in sse_events(response)]
    assert job["status"] == "succeeded" and job["answered_by"] == "local-small"
    kinds = [event["type"] for event in events]
    cut = kinds.index("fallback")
    assert "delta" in kinds[:cut]  # the premium model had streamed some text
    assert events[cut] == {
        "type": "fallback",
        "from": "premium-large",
        "to": "local-small",
        "reason": "provider_stream_broken",
    }
    assert "".join(e["text"] for e in events[cut:] if e["type"] == "delta") == job["output"]  # complete, from tier 2
    assert kinds[-1] == "done"
    with tenant_context(carol.tenant):
        entries = sorted(LedgerEntry.objects.filter(job_id=job_id).values_list("call", "kind"))
    # The cut call is charged and refunded (its tokens were generated), the answer charged.
    assert entries == [(0, LedgerKind.CHARGE), (0, LedgerKind.REFUND), (1, LedgerKind.CHARGE)]


def test_requests_name_fallbacks_only_within_the_policy(committed_personas: Personas):
    _premium_chain()
    client = committed_personas.carol.client()
    refused = client.post("/api/v1/jobs", {**ASK, "fallbacks": ["routing-probe"]}, format="json")
    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == "fallback_not_allowed"
    assert refused.json()["error"]["param"] == "fallbacks"
    accepted = client.post("/api/v1/jobs", {**ASK, "fallbacks": []}, format="json")
    assert accepted.status_code == 202 and accepted.json()["fallbacks"] == []


def test_a_switched_off_fallback_model_is_skipped(worker, committed_personas: Personas, upstream):
    from apps.controls.models import SwitchLevel
    from apps.controls.switches import switch_set

    _premium_chain()
    switch_set(level=SwitchLevel.MODEL, active=True, actor="test", reason="incident", model="local-small")
    upstream.add_faults({"model": "premium-large", "status": 500, "message": "premium is down"})
    job = _run(committed_personas.carol.client(), ASK)
    assert job["status"] == "failed"
    assert [(a["model"], a["outcome"]) for a in job["attempts"]] == [
        ("premium-large", "failed"),
        ("local-small", "skipped"),
    ]
    assert "switched off" in job["attempts"][1]["message"]
    assert int(upstream.stats()["chat_per_model"].get("local-small", 0)) == 0
