"""`store` and `service_tier` per model, against the live platform (uvicorn, the
real worker, Valkey, Postgres, the upstream speaking OpenAI's protocol, the
official openai SDK): each reaches the provider only where the catalog allows
it, a request the model cannot serve is a 400 naming the field on both APIs (a
fallback step is skipped instead), the budget hold is the tier's worst case, and
the charge is at the tier the provider reported (else the one requested)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from decimal import ROUND_CEILING, Decimal
from typing import Any

import openai
import pytest
import redis
from django.conf import settings
from django_tenants.utils import tenant_context

from apps.billing.models import LedgerEntry, LedgerKind, UserBudget
from apps.billing.windows import counter_key, period_window
from apps.catalog.models import LLMModel
from apps.catalog.selectors import catalog_cache_clear
from apps.controls.models import FallbackPolicy
from apps.jobs.models import Job
from apps.llm.tokens import CL100K, count_message_tokens, count_text_tokens
from tests.support import Persona, Personas, http_client, job_until_final, wait_for

ASK: list[Any] = [{"role": "user", "content": "hello tiers"}]
TIERS = {"flex": "0.5", "priority": "2"}
Edit = Callable[..., None]


@pytest.fixture
def catalog(committed_db: None) -> Iterator[Edit]:
    """edit(slug, **fields): a catalog row changed for the test, put back after."""
    saved: dict[str, LLMModel] = {}

    def edit(slug: str, **fields: Any) -> None:
        saved.setdefault(slug, LLMModel.objects.get(slug=slug))
        LLMModel.objects.filter(slug=slug).update(**fields)
        catalog_cache_clear()

    try:
        yield edit
    finally:
        for row in saved.values():
            row.save()
        catalog_cache_clear()


@pytest.fixture
def sdk(platform_server, worker, committed_personas: Personas) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{platform_server.url}/v1", api_key=committed_personas.alice.key, max_retries=0, timeout=20
    )


def _sent(upstream: Any) -> dict[str, Any]:
    bodies = [r["body"] for r in upstream.stats()["last_requests"] if r["path"].endswith("/chat/completions")]
    return bodies[-1]


def _job(persona: Persona, job_id: str) -> Job:
    with tenant_context(persona.tenant):
        return Job.objects.get(pk=job_id)


def _charges(persona: Persona, job_id: str) -> list[tuple[str, int, str]]:
    with tenant_context(persona.tenant):
        entries = LedgerEntry.objects.filter(job_id=job_id).order_by("created_at", "kind")
        return [(entry.kind, entry.cost_micros, entry.note) for entry in entries]


def _day_counter(persona: Persona) -> dict[str, int]:
    key = counter_key(
        schema=persona.tenant.schema_name, scope="user", user_id=persona.user_id, window=period_window("day")
    )
    raw = redis.Redis.from_url(settings.REDIS_URL).hgetall(key)
    return {(k.decode() if isinstance(k, bytes) else k): int(v) for k, v in raw.items()}


def _budget(persona: Persona, usd: str) -> None:
    with tenant_context(persona.tenant):
        UserBudget.objects.create(user_id=persona.user_id, period="day", limit_usd=Decimal(usd))


# Forwarding


def test_store_and_service_tier_reach_the_provider_only_where_the_catalog_allows(
    sdk: openai.OpenAI, upstream, catalog: Edit
):
    # local-small is an OpenAI-provider model here, with no tiers and no store.
    sdk.chat.completions.create(model="local-small", messages=ASK, store=False, service_tier="auto")
    sent = _sent(upstream)
    assert "store" not in sent and sent["service_tier"] == "auto"
    catalog("local-small", allows_store=True, service_tiers=TIERS)
    answer = sdk.chat.completions.create(model="local-small", messages=ASK, store=True, service_tier="priority")
    sent = _sent(upstream)
    assert (sent["store"], sent["service_tier"]) == (True, "priority")
    assert answer.choices[0].message.content == "Echo: hello tiers"
    # Another server with no tiers listed is sent neither auto nor default: its own
    # default is what they ask for.
    catalog("local-small", provider="vllm", service_tiers={})
    for tier in ("auto", "default"):
        sdk.chat.completions.create(model="local-small", messages=ASK, service_tier=tier)
        assert "service_tier" not in _sent(upstream)
    # One that lists tiers is sent the tier it serves.
    catalog("local-small", service_tiers={"priority": "1.5"})
    sdk.chat.completions.create(model="local-small", messages=ASK, service_tier="priority")
    assert _sent(upstream)["service_tier"] == "priority"


@pytest.mark.parametrize(
    ("extra", "param", "code"),
    [
        ({"store": True}, "store", "unsupported_parameter"),  # the model does not allow store
        ({"service_tier": "priority"}, "service_tier", "unsupported_parameter"),  # it lists no tiers
        ({"service_tier": "scale"}, "service_tier", "unsupported_parameter"),  # a tier OpenAI names, not listed
        ({"service_tier": "turbo"}, "service_tier", "invalid_choice"),  # no such tier anywhere
        ({"service_tier": ""}, "service_tier", "invalid_choice"),
        ({"service_tier": ["priority"]}, "service_tier", "invalid_choice"),
        ({"store": "yes please"}, "store", "invalid"),
    ],
)
def test_what_the_model_cannot_serve_is_400_naming_the_field_on_both_apis(
    platform_server, committed_personas: Personas, catalog: Edit, extra: dict[str, Any], param: str, code: str
):
    catalog("local-small", service_tiers={"flex": "0.5"})
    alice = committed_personas.alice
    body = {"model": "local-small", "messages": ASK, **extra}
    with http_client(platform_server, alice.key) as client:
        for path in ("/v1/chat/completions", "/api/v1/jobs"):
            response = client.post(path, json=body)
            assert response.status_code == 400, response.text
            error = response.json()["error"]
            assert (error["param"], error["code"]) == (param, code), response.text
    with tenant_context(alice.tenant):
        assert not Job.objects.exists()  # nothing was stored or called


def test_null_store_and_service_tier_mean_absent(platform_server, worker, committed_personas: Personas, upstream):
    alice = committed_personas.alice
    body = {"model": "local-small", "messages": ASK, "store": None, "service_tier": None}
    created = alice.client().post("/api/v1/jobs", body, format="json")
    assert created.status_code == 202, created.json()
    assert job_until_final(alice.client(), created.json()["id"])["status"] == "succeeded"
    assert _job(alice, created.json()["id"]).params == {}
    sent = _sent(upstream)
    assert "store" not in sent and "service_tier" not in sent


def test_a_fallback_step_without_the_tier_is_skipped(worker, committed_personas: Personas, catalog: Edit, upstream):
    FallbackPolicy.objects.create(tier="premium", chain=["premium-large", "local-small"])
    catalog("premium-large", service_tiers={"priority": "2"})
    upstream.add_faults({"model": "premium-large", "status": 500, "message": "premium is down", "times": 10})
    carol = committed_personas.carol
    created = carol.client().post(
        "/api/v1/jobs", {"model": "premium-large", "messages": ASK, "service_tier": "priority"}, format="json"
    )
    assert created.status_code == 202, created.json()
    job = job_until_final(carol.client(), created.json()["id"], timeout=30)
    assert job["status"] == "failed"
    skipped = [a for a in job["attempts"] if a["model"] == "local-small"]
    assert [a["outcome"] for a in skipped] == ["skipped"]
    assert "does not serve the priority service tier" in skipped[0]["message"]
    assert int(upstream.stats()["chat_per_model"].get("local-small", 0)) == 0
    # Without a tier, or at auto, the same step answers.
    created = carol.client().post(
        "/api/v1/jobs", {"model": "premium-large", "messages": ASK, "service_tier": "auto"}, format="json"
    )
    job = job_until_final(carol.client(), created.json()["id"], timeout=30)
    assert (job["status"], job["answered_by"]) == ("succeeded", "local-small")


def test_one_exact_entry_answers_every_tier_and_store(sdk: openai.OpenAI, upstream, catalog: Edit):
    """A tier changes the speed and the price of an answer, store whether the
    provider keeps it: neither its text. A cached answer is free at any tier."""
    catalog("local-small", service_tiers=TIERS)
    first = sdk.chat.completions.create(model="local-small", messages=ASK, temperature=0, service_tier="priority")
    calls = int(upstream.stats()["chat_per_model"]["local-small"])
    asks: list[tuple[Any, Any]] = [
        ("flex", False),
        ("auto", openai.omit),
        (openai.omit, False),
        (openai.omit, openai.omit),
    ]
    for tier, store in asks:
        raw = sdk.chat.completions.with_raw_response.create(
            model="local-small", messages=ASK, temperature=0, service_tier=tier, store=store
        )
        assert raw.headers["x-aip-cost-usd"] == "0.000000"
        assert raw.parse().choices[0].message.content == first.choices[0].message.content
    assert int(upstream.stats()["chat_per_model"]["local-small"]) == calls  # one entry: neither is in the key


# The hold


@pytest.mark.parametrize(
    ("tier", "multiple"),
    [
        ("priority", Decimal(2)),
        ("flex", Decimal("0.5")),
        ("default", Decimal(1)),
        ("auto", Decimal(2)),  # the project may serve auto at priority: held at the dearest tier
        (None, Decimal(2)),
    ],
)
def test_the_hold_is_the_requested_tiers_worst_case(
    platform_server, committed_personas: Personas, catalog: Edit, tier: str | None, multiple: Decimal
):
    """routing-probe has no worker: the hold stays as admission made it."""
    catalog(
        "routing-probe",
        input_price_per_mtok=Decimal("0.15"),
        output_price_per_mtok=Decimal("0.6"),
        service_tiers=TIERS,
    )
    alice = committed_personas.alice
    _budget(alice, "100")
    body: dict[str, Any] = {"model": "routing-probe", "messages": ASK, "max_tokens": 333}
    if tier is not None:
        body["service_tier"] = tier
    try:
        created = alice.client().post("/api/v1/jobs", body, format="json")
        assert created.status_code == 202, created.json()
        # OpenAI's tokenizer is ours: the input is held as counted, no margin.
        worst = (Decimal(count_message_tokens(ASK)) * Decimal("0.15") + 333 * Decimal("0.6")) * multiple
        expected = int(worst.to_integral_value(rounding=ROUND_CEILING))
        assert _job(alice, created.json()["id"]).reserved_micros == expected
        assert _day_counter(alice) == {"spent": 0, "reserved": expected}
    finally:
        redis.Redis.from_url(settings.CELERY_BROKER_URL).delete("llm.routing-probe")


def test_a_budget_that_fits_the_default_tier_but_not_priority(
    platform_server, committed_personas: Personas, catalog: Edit
):
    catalog("routing-probe", input_price_per_mtok=Decimal(0), output_price_per_mtok=Decimal(1), service_tiers=TIERS)
    alice = committed_personas.alice
    _budget(alice, "0.001500")  # 1,500 output tokens at 1x, 750 at priority
    body = {"model": "routing-probe", "messages": ASK, "max_tokens": 1000}
    try:
        with http_client(platform_server, alice.key) as client:
            refused = client.post("/api/v1/jobs", json={**body, "service_tier": "priority"})
            assert refused.status_code == 402, refused.text
            error = refused.json()["error"]
            assert (error["code"], error["param"]) == ("budget_exceeded", "max_tokens")
            assert "A max_tokens of 750 or less would fit." in error["message"]
            admitted = client.post("/api/v1/jobs", json={**body, "service_tier": "default"})
            assert admitted.status_code == 202, admitted.text
            assert _job(alice, admitted.json()["id"]).reserved_micros == 1000
            assert client.post(f"/api/v1/jobs/{admitted.json()['id']}/cancel").status_code == 200
            # No max_tokens: held, and sent, at the largest that fits at the tier.
            fitted = client.post(
                "/api/v1/jobs", json={"model": "routing-probe", "messages": ASK, "service_tier": "priority"}
            )
            assert fitted.status_code == 202, fitted.text
        job = _job(alice, fitted.json()["id"])
        assert (job.params["max_tokens"], job.reserved_micros) == (750, 1500)
        assert _day_counter(alice) == {"spent": 0, "reserved": 1500}
    finally:
        redis.Redis.from_url(settings.CELERY_BROKER_URL).delete("llm.routing-probe")


# The charge


@pytest.fixture
def per_output_token(catalog: Edit) -> None:
    """local-small with free input and $1 per 1M output tokens, priority at 2x
    and flex at half: a call costs its output tokens times the tier's multiple."""
    catalog("local-small", input_price_per_mtok=Decimal(0), output_price_per_mtok=Decimal(1), service_tiers=TIERS)


@pytest.mark.parametrize(
    ("asked", "reports", "served", "multiple"),
    [
        ("priority", None, "priority", 2),  # the provider says the tier it was asked
        ("flex", None, "flex", Decimal("0.5")),
        ("auto", None, "default", 1),  # a project on default
        ("auto", "priority", "priority", 2),  # a project on priority: auto is served, and billed, there
        (None, "priority", "priority", 2),
        ("priority", "default", "default", 1),  # beyond priority's ramp: served, and billed, at default
        ("priority", "", "", 2),  # a provider that says nothing: the tier asked for
        ("auto", "scale", "scale", 1),  # a tier the catalog does not price: 1x (logged)
    ],
)
def test_the_charge_is_at_the_tier_the_provider_reported(
    sdk: openai.OpenAI,
    upstream,
    committed_personas: Personas,
    per_output_token: None,
    asked: Any,
    reports: str | None,
    served: str,
    multiple: Any,
):
    alice = committed_personas.alice
    _budget(alice, "100")
    upstream.configure(service_tier=reports)
    raw = sdk.chat.completions.with_raw_response.create(
        model="local-small", messages=ASK, service_tier=asked if asked else openai.omit
    )
    completion = raw.parse()
    assert completion.usage is not None
    expected = int((completion.usage.completion_tokens * Decimal(multiple)).to_integral_value(ROUND_CEILING))
    job_id = raw.headers["x-aip-job-id"]
    job = _job(alice, job_id)
    assert (job.service_tier, job.cost_micros) == (served, expected)
    assert _charges(alice, job_id) == [(LedgerKind.CHARGE, expected, "")]
    assert raw.headers["x-aip-cost-usd"] == f"{Decimal(expected) / 1_000_000:.6f}"
    wait_for(lambda: _day_counter(alice) == {"spent": expected, "reserved": 0})  # the hold settled at the charge


def test_a_stopped_call_is_charged_at_the_requested_tier(
    platform_server, worker, committed_personas: Personas, per_output_token: None, upstream
):
    upstream.configure(reply=" ".join(f"w{i}" for i in range(400)), chunk_delay_ms=20)
    alice = committed_personas.alice
    created = alice.client().post(
        "/api/v1/jobs", {"model": "local-small", "messages": ASK, "service_tier": "priority"}, format="json"
    )
    job_id = created.json()["id"]
    wait_for(lambda: _job(alice, job_id).status == "running")
    time.sleep(0.5)  # some text streams
    assert alice.client().post(f"/api/v1/jobs/{job_id}/cancel").status_code == 200
    wait_for(lambda: bool(_charges(alice, job_id)), timeout=10)
    job = _job(alice, job_id)
    assert job.output_tokens and job.cost_micros == 2 * job.output_tokens
    [(kind, cost, note)] = _charges(alice, job_id)
    assert (kind, cost) == (LedgerKind.CHARGE, 2 * job.output_tokens) and note.startswith("stopped")


def test_a_broken_stream_is_charged_and_refunded_at_the_requested_tier(
    platform_server, worker, committed_personas: Personas, per_output_token: None, upstream
):
    upstream.configure(reply="one two three four five six seven")
    upstream.add_faults({"kind": "cut_stream", "after_chunks": 3, "times": 5})
    alice = committed_personas.alice
    created = alice.client().post(
        "/api/v1/jobs", {"model": "local-small", "messages": ASK, "service_tier": "flex"}, format="json"
    )
    job = job_until_final(alice.client(), created.json()["id"], timeout=30)
    assert job["status"] == "failed"
    counted = count_text_tokens("one two three", CL100K)  # what streamed before the cut
    expected = int((Decimal(counted) * Decimal("0.5")).to_integral_value(ROUND_CEILING))
    entries = _charges(alice, job["id"])
    assert sorted((kind, cost) for kind, cost, _ in entries) == [
        (LedgerKind.CHARGE, expected),
        (LedgerKind.REFUND, -expected),
    ]
