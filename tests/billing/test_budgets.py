"""Budgets that are never overshot, and the ledger behind them: real web server,
real worker, real Valkey and Postgres."""

from __future__ import annotations

import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import openai
import pytest
import redis
from django.conf import settings
from django.db.models import Sum
from django_tenants.utils import tenant_context

from apps.billing.models import AppendOnly, LedgerEntry, LedgerKind, UserBudget
from apps.billing.money import cost_micros, format_usd
from apps.billing.services import chain_fit, ledger_cached, ledger_record, worst_case_cost
from apps.billing.windows import counter_key, period_window, reservation_key
from apps.catalog.selectors import model_get
from apps.controls.models import SpendRollup, TenantBudget
from apps.jobs.enqueue import job_enqueue
from apps.jobs.execute import job_execute
from apps.jobs.models import Job, JobStatus
from apps.llm.tokens import count_message_tokens
from tests.support import Persona, Personas, http_client, job_until_final, wait_for

MESSAGES = [{"role": "user", "content": "hello budget"}]
MAX_TOKENS = 1000


def _worst_case(model: str = "local-small") -> int:
    spec = model_get(model)
    assert spec is not None
    return worst_case_cost(spec, input_tokens=count_message_tokens(MESSAGES), max_tokens=MAX_TOKENS)


def _give_budget(persona: Persona, micros: int, period: str = "day") -> None:
    with tenant_context(persona.tenant):
        UserBudget.objects.create(user_id=persona.user_id, period=period, limit_usd=Decimal(micros) / 1_000_000)


def _counter(persona: Persona, scope: str = "user", period: str = "day") -> dict[str, int]:
    key = counter_key(
        schema=persona.tenant.schema_name, scope=scope, user_id=persona.user_id, window=period_window(period)
    )
    raw = redis.Redis.from_url(settings.REDIS_URL).hgetall(key)
    return {(k.decode() if isinstance(k, bytes) else k): int(v) for k, v in raw.items()}


def _ledger_total(persona: Persona) -> int:
    with tenant_context(persona.tenant):
        return LedgerEntry.objects.filter(user_id=persona.user_id).aggregate(t=Sum("cost_micros"))["t"] or 0


def test_200_racing_requests_admit_exactly_those_that_fit(platform_server, committed_personas: Personas):
    """No worker serves routing-probe, so nothing settles during the race: the
    budget fits exactly 7 worst cases, and exactly 7 of 200 are admitted."""
    alice = committed_personas.alice
    fits = 7
    _give_budget(alice, fits * _worst_case("routing-probe"))
    body = {"model": "routing-probe", "messages": MESSAGES, "max_tokens": MAX_TOKENS}

    def submit(_: int) -> int:
        with http_client(platform_server, alice.key) as client:
            return client.post("/api/v1/jobs", json=body).status_code

    with ThreadPoolExecutor(max_workers=50) as pool:
        statuses = Counter(pool.map(submit, range(200)))

    assert statuses == {202: fits, 402: 200 - fits}
    assert _counter(alice) == {"spent": 0, "reserved": fits * _worst_case("routing-probe")}
    # Cancelling the queued jobs gives every hold back: nothing is left behind.
    client = alice.client()
    with tenant_context(alice.tenant):
        ids = [str(pk) for pk in Job.objects.filter(user_id=alice.user_id).values_list("id", flat=True)]
    for job_id in ids:
        assert client.post(f"/api/v1/jobs/{job_id}/cancel").status_code == 200
    assert _counter(alice) == {"spent": 0, "reserved": 0}
    store = redis.Redis.from_url(settings.REDIS_URL)
    assert not [k for k in store.scan_iter(match=f"aip:{{{alice.tenant.schema_name}}}:resv:*")]
    store.delete("llm.routing-probe")


def test_settled_jobs_charge_actual_cost_and_never_exceed_the_budget(worker, committed_personas: Personas, upstream):
    alice = committed_personas.alice
    limit = 5 * _worst_case()
    _give_budget(alice, limit)
    client = alice.client()
    body = {"model": "local-small", "messages": MESSAGES, "max_tokens": MAX_TOKENS}
    admitted = []
    for _ in range(12):  # more than fit if every call cost its worst case; each costs far less
        response = client.post("/api/v1/jobs", body, format="json")
        if response.status_code != 202:
            assert response.status_code == 402
            break
        admitted.append(job_until_final(client, response.json()["id"]))
    assert len(admitted) == 12  # settlement gave back what the calls did not use
    assert all(job["status"] == "succeeded" for job in admitted)

    spec = model_get("local-small")
    assert spec is not None
    with tenant_context(alice.tenant):
        charges = list(LedgerEntry.objects.filter(user_id=alice.user_id).order_by("created_at"))
        jobs = {str(j.pk): j for j in Job.objects.filter(user_id=alice.user_id)}
    assert [e.kind for e in charges] == [LedgerKind.CHARGE] * 12
    for entry in charges:
        job = jobs[str(entry.job_id)]
        expected = cost_micros(
            input_tokens=job.input_tokens or 0,
            output_tokens=job.output_tokens or 0,
            input_price=spec.input_price_per_mtok,
            output_price=spec.output_price_per_mtok,
        )
        assert entry.cost_micros == job.cost_micros == expected > 0
        assert (entry.input_tokens, entry.output_tokens) == (job.input_tokens, job.output_tokens)
    total = _ledger_total(alice)
    assert total <= limit
    assert _counter(alice) == {"spent": total, "reserved": 0}
    rollup = SpendRollup.objects.get(tenant=alice.tenant, model="local-small")
    assert (rollup.requests, rollup.cost_micros) == (12, total)


def test_over_budget_is_402_in_the_api_and_429_insufficient_quota_for_openai_sdks(
    platform_server, committed_personas: Personas
):
    carol = committed_personas.carol
    TenantBudget.objects.create(tenant=carol.tenant, period="month", limit_usd=Decimal("0.000100"))
    client = carol.client()
    response = client.post(
        "/api/v1/jobs", {"model": "local-small", "messages": MESSAGES, "max_tokens": MAX_TOKENS}, format="json"
    )
    assert response.status_code == 402
    error = response.json()["error"]
    assert (error["code"], error["param"]) == ("budget_exceeded", "max_tokens")
    window = period_window("month")
    # Too large for what is left: the max_tokens that would fit is named; carol's is a
    # plain user key, so the organisation's amounts are not.
    spec = model_get("local-small")
    assert spec is not None
    fits = chain_fit([spec], input_tokens=count_message_tokens(MESSAGES), cap=MAX_TOKENS, room=100)
    assert fits is not None
    assert f"your organisation's monthly budget. A max_tokens of {fits[0]} or less would fit." in error["message"]
    assert "$" not in error["message"]
    assert window.end.strftime("%Y-%m-%dT%H:%M:%SZ") in error["message"]
    assert 0 < int(response["Retry-After"]) <= 31 * 24 * 3600

    sdk = openai.OpenAI(base_url=f"{platform_server.url}/v1", api_key=carol.key, max_retries=0)
    with pytest.raises(openai.RateLimitError) as caught:
        sdk.chat.completions.create(model="local-small", messages=MESSAGES, max_tokens=MAX_TOKENS)  # type: ignore[arg-type]
    assert caught.value.status_code == 429
    assert caught.value.code == "insufficient_quota"
    assert caught.value.type == "insufficient_quota"
    with tenant_context(carol.tenant):
        assert not Job.objects.exists()  # nothing was queued


def test_redelivered_task_charges_once_and_failed_job_releases_its_hold(worker, committed_personas: Personas, upstream):
    alice = committed_personas.alice
    _give_budget(alice, 100 * _worst_case())
    client = alice.client()
    body = {"model": "local-small", "messages": MESSAGES, "max_tokens": MAX_TOKENS}
    job = job_until_final(client, client.post("/api/v1/jobs", body, format="json").json()["id"])
    with tenant_context(alice.tenant):
        job_enqueue(job_id=job["id"], model="local-small")  # redeliveries
        job_execute(job_id=Job.objects.get(pk=job["id"]).pk)
        wait_for(lambda: redis.Redis.from_url(settings.CELERY_BROKER_URL).llen("llm.local-small") == 0)
        assert LedgerEntry.objects.filter(job_id=job["id"]).count() == 1
        # The ledger refuses a second charge for the same attempt outright.
        spec = model_get("local-small")
        assert spec is not None
        again = ledger_record(
            kind=LedgerKind.CHARGE, user_id=alice.user_id, job_id=job["id"], attempt=1, model="local-small", cost=5
        )
        assert again is False
    charged = _ledger_total(alice)

    upstream.add_faults({"model": "local-small", "status": 500, "message": "boom"})
    failed = job_until_final(client, client.post("/api/v1/jobs", body, format="json").json()["id"])
    assert failed["status"] == "failed"
    assert _ledger_total(alice) == charged  # nothing charged for the failed call
    assert _counter(alice) == {"spent": charged, "reserved": 0}
    assert not redis.Redis.from_url(settings.REDIS_URL).exists(
        reservation_key(schema=alice.tenant.schema_name, job_id=failed["id"])
    )


def test_a_lost_counter_is_rebuilt_from_the_ledger(committed_personas: Personas, platform):
    """Redis lost the counter (or the period is new): the next admission rebuilds
    it from what the ledger says was spent this period."""
    bob = committed_personas.bob
    limit = 3 * _worst_case()
    _give_budget(bob, limit, period="month")
    with tenant_context(bob.tenant):
        ledger_record(
            kind=LedgerKind.ADJUSTMENT,
            user_id=bob.user_id,
            model="local-small",
            cost=2 * _worst_case() + 1,
            note="spent before the counter was lost",
        )
    client = bob.client()
    body = {"model": "routing-probe", "messages": MESSAGES, "max_tokens": MAX_TOKENS}
    assert _counter(bob, period="month") == {}
    assert (
        client.post("/api/v1/jobs", body, format="json").status_code == 402
    )  # 2 worst cases + 1 spent: 1 does not fit
    assert _counter(bob, period="month") == {"spent": 2 * _worst_case() + 1, "reserved": 0}
    redis.Redis.from_url(settings.REDIS_URL).delete("llm.routing-probe")


def test_ledger_is_append_only_and_cached_answers_record_what_they_saved(committed_personas: Personas, platform):
    alice = committed_personas.alice
    spec = model_get("local-small")
    assert spec is not None
    with tenant_context(alice.tenant):
        job = Job.objects.create(user_id=alice.user_id, model="local-small", messages=MESSAGES)
        ledger_cached(user_id=alice.user_id, spec=spec, input_tokens=1000, output_tokens=2000, job_id=job.pk)
        entry = LedgerEntry.objects.get(job=job)
        assert (entry.kind, entry.cost_micros) == (LedgerKind.CACHED, 0)
        assert entry.saved_micros == cost_micros(
            input_tokens=1000,
            output_tokens=2000,
            input_price=spec.input_price_per_mtok,
            output_price=spec.output_price_per_mtok,
        )
        entry.cost_micros = 1
        with pytest.raises(AppendOnly):
            entry.save()
        with pytest.raises(AppendOnly):
            entry.delete()
        with pytest.raises(AppendOnly):
            LedgerEntry.objects.filter(pk=entry.pk).update(cost_micros=1)
        with pytest.raises(AppendOnly):
            LedgerEntry.objects.all().delete()
        assert LedgerEntry.objects.get(pk=entry.pk).cost_micros == 0
        Job.objects.filter(pk=job.pk).update(status=JobStatus.CANCELLED)


def test_money_helpers_are_exact():
    assert (
        cost_micros(input_tokens=1000, output_tokens=0, input_price=Decimal("0.15"), output_price=Decimal("0.6")) == 150
    )
    # A fraction of a micro-dollar rounds up: a charge never exceeds its reservation.
    assert cost_micros(input_tokens=1, output_tokens=1, input_price=Decimal("0.15"), output_price=Decimal("0.6")) == 1
    assert format_usd(5_000_000) == "$5.00"
    assert format_usd(150) == "$0.00015"


def test_a_call_that_breaks_mid_stream_is_charged_and_refunded(worker, committed_personas: Personas, upstream):
    alice = committed_personas.alice
    _give_budget(alice, 100 * _worst_case())
    upstream.add_faults({"model": "local-small", "kind": "cut_stream", "after_chunks": 2})
    client = alice.client()
    body = {"model": "local-small", "messages": [{"role": "user", "content": "one two three four five"}],
            "max_tokens": MAX_TOKENS}  # fmt: skip
    job = job_until_final(client, client.post("/api/v1/jobs", body, format="json").json()["id"])
    assert job["status"] == "failed" and job["error"]["type"] == "provider_stream_broken"
    with tenant_context(alice.tenant):
        entries = list(LedgerEntry.objects.filter(job_id=job["id"]).order_by("id"))
    assert [e.kind for e in entries] == [LedgerKind.CHARGE, LedgerKind.REFUND]
    charge, refund = entries
    assert charge.cost_micros > 0 and refund.cost_micros == -charge.cost_micros
    assert charge.output_tokens > 0 and charge.attempt == refund.attempt == 1
    assert _ledger_total(alice) == 0
    assert _counter(alice) == {"spent": 0, "reserved": 0}


def test_sweep_settles_ended_jobs_and_releases_orphaned_holds(committed_personas: Personas, platform):
    from apps.accounts.selectors import Principal
    from apps.billing.budgets import budget_reserve
    from apps.jobs.holds import holds_repair as reservations_sweep

    alice = committed_personas.alice
    _give_budget(alice, 100 * _worst_case())
    principal = Principal(tenant_schema="acme", user_id=alice.user_id, email=alice.email, tier="standard",
                          key_id=0, key_prefix="")  # fmt: skip
    store = redis.Redis.from_url(settings.REDIS_URL)
    with tenant_context(alice.tenant):
        ended = Job.objects.create(user_id=alice.user_id, model="local-small", messages=MESSAGES,
                                   status=JobStatus.SUCCEEDED, cost_micros=42)  # fmt: skip
        waiting = Job.objects.create(user_id=alice.user_id, model="local-small", messages=MESSAGES)
        orphan = uuid.uuid4()  # a hold whose job was never stored
        for job_id in (ended.pk, waiting.pk, orphan):
            assert budget_reserve(principal=principal, job_id=job_id, amount_micros=1000)
        assert _counter(alice) == {"spent": 0, "reserved": 3000}

        assert reservations_sweep(schema="acme") == {"settled": 1, "released": 0}  # the orphan is too young
        assert _counter(alice) == {"spent": 42, "reserved": 2000}
        assert reservations_sweep(schema="acme", stale_after_seconds=-1) == {"settled": 0, "released": 1}
        assert _counter(alice) == {"spent": 42, "reserved": 1000}  # the queued job keeps its hold
        assert store.exists(reservation_key(schema="acme", job_id=waiting.pk))
        Job.objects.filter(pk__in=[ended.pk, waiting.pk]).update(status=JobStatus.CANCELLED)


def test_embeddings_are_metered_and_held_to_the_budget(platform_server, committed_personas: Personas, upstream):
    alice = committed_personas.alice
    spec = model_get("local-small")
    assert spec is not None
    sdk = openai.OpenAI(base_url=f"{platform_server.url}/v1", api_key=alice.key, max_retries=0)
    response = sdk.embeddings.create(model="local-small", input=["hello world", "good night moon"])
    assert response.usage.prompt_tokens > 0
    with tenant_context(alice.tenant):
        entry = LedgerEntry.objects.get(user_id=alice.user_id)
    assert (entry.kind, entry.job_id, entry.note) == (LedgerKind.CHARGE, None, "embeddings")
    assert entry.input_tokens == response.usage.prompt_tokens
    assert entry.cost_micros == cost_micros(
        input_tokens=entry.input_tokens, output_tokens=0,
        input_price=spec.input_price_per_mtok, output_price=spec.output_price_per_mtok,
    )  # fmt: skip

    _give_budget(alice, entry.cost_micros)  # spent already: nothing more fits
    with pytest.raises(openai.RateLimitError) as caught:
        sdk.embeddings.create(model="local-small", input="one more")
    assert caught.value.code == "insufficient_quota"
    assert upstream.stats()["embeddings_per_model"]["local-small"] == 1  # the refused call never left
    assert _counter(alice) == {"spent": entry.cost_micros, "reserved": 0}
