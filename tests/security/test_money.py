"""Money under attack: budgets, cancels, failures, deadlines and deletions, driven
as a hostile (or merely unlucky) tenant user would, through the real web server,
worker, Valkey, Postgres and an upstream that speaks OpenAI's protocol."""

from __future__ import annotations

import contextlib
import json
import socket
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from decimal import Decimal
from typing import Any

import redis
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db.models import Sum
from django.test import Client
from django.utils import timezone
from django_tenants.utils import tenant_context

from apps.accounts.selectors import Principal
from apps.accounts.services import api_key_create
from apps.billing.budgets import budget_reserve
from apps.billing.models import LedgerEntry, LedgerKind, UserBudget
from apps.billing.money import cost_micros
from apps.billing.services import ledger_record
from apps.billing.windows import counter_key, period_window, reservation_key
from apps.catalog.models import LLMModel
from apps.catalog.selectors import catalog_cache_clear, model_get
from apps.controls.models import KillSwitch, KillSwitchEvent, SwitchLevel, TenantBudget
from apps.jobs.events import stream_key
from apps.jobs.execute import job_execute
from apps.jobs.models import Job, JobStatus
from apps.jobs.sweep import jobs_requeue_stale
from apps.llm.tokens import count_message_tokens
from tests.billing import conftest as billing
from tests.billing.conftest import LONG_REPLY, chat_bodies
from tests.jobs import test_gevent_worker
from tests.support import Persona, Personas, http_client, job_until_final, wait_for

micro_priced = billing.micro_priced  # the fixture: calls cost exactly their output tokens

MESSAGES = [{"role": "user", "content": "hello budget"}]


def _store() -> Any:  # untyped: redis-py answers bytes here (no decode_responses)
    return redis.Redis.from_url(settings.REDIS_URL)


def _counter(persona: Persona, scope: str, period: str = "day", at: Any = None) -> dict[str, int]:
    key = counter_key(
        schema=persona.tenant.schema_name, scope=scope, user_id=persona.user_id, window=period_window(period, at)
    )
    return {k.decode(): int(v) for k, v in _store().hgetall(key).items()}


def _tenant_spent(persona: Persona) -> int:
    with tenant_context(persona.tenant):
        total = LedgerEntry.objects.aggregate(t=Sum("cost_micros"))["t"]
    return int(total or 0)


def _tenant_switched_off(persona: Persona) -> bool:
    return KillSwitch.objects.filter(level=SwitchLevel.TENANT, tenant=persona.tenant, active=True).exists()


def _settled(persona: Persona) -> bool:
    """Every admitted job of the tenant ended and gave its hold back."""
    with tenant_context(persona.tenant):
        unfinished = Job.objects.exclude(status__in=["succeeded", "failed", "cancelled"]).exists()
    return not unfinished and _counter(persona, "tenant").get("reserved", 0) == 0


def test_waves_of_concurrent_requests_never_switch_the_tenant_off_while_it_has_room(
    worker, platform_server, committed_personas: Personas, micro_priced, upstream
):
    """The issue's attack: waves of concurrent requests at a small tenant budget.
    Refusals while holds are in flight are `budget_busy` (short Retry-After) and flip
    nothing; spend never exceeds the limit; and the tenant is switched off only when
    its settled spend reaches it. Each call holds 10 micro-dollars (max_tokens 10)
    and costs 5 (the reply is 5 tokens), so holds, not spend, fill the budget."""
    alice = committed_personas.alice
    upstream.configure(reply="w0 w1 w2 w3 w4")
    limit = 300  # micro-dollars: 30 holds' worth, and each wave sends 40
    TenantBudget.objects.create(tenant=alice.tenant, period="day", limit_usd=Decimal(limit) / 1_000_000)
    body = {"model": "local-small", "messages": MESSAGES, "max_tokens": 10}

    def submit(_: int) -> tuple[int, str, str]:
        with http_client(platform_server, alice.key) as client:
            response = client.post("/api/v1/jobs", json=body)
        code = response.json()["error"]["code"] if response.status_code != 202 else ""
        return response.status_code, code, response.headers.get("Retry-After", "")

    busy_waves = 0
    for _ in range(12):
        with ThreadPoolExecutor(max_workers=40) as pool:
            answers = list(pool.map(submit, range(40)))
        statuses = Counter((status, code) for status, code, _ in answers)
        assert set(statuses) <= {(202, ""), (402, "budget_busy"), (402, "budget_exceeded")}, statuses
        assert {retry for _, code, retry in answers if code == "budget_busy"} <= {
            str(settings.BUDGET_BUSY_RETRY_SECONDS)
        }
        busy_waves += bool(statuses[(402, "budget_busy")])
        wait_for(lambda: _settled(alice), timeout=60)
        spent = _tenant_spent(alice)
        assert spent <= limit
        assert _counter(alice, "tenant") == {"spent": spent, "reserved": 0}
        assert not _tenant_switched_off(alice), f"switched off with {spent} of {limit} spent"
        if not statuses[(202, "")]:
            break  # what is left is below one hold: every request is too large now
    else:
        raise AssertionError("the waves never used the budget up")
    assert busy_waves >= 2
    left = limit - _tenant_spent(alice)
    assert 0 < left < 10
    # Too large, not switched off: the refusal names the max_tokens that still fits.
    refused = alice.client().post("/api/v1/jobs", body, format="json").json()["error"]
    assert refused["code"] == "budget_exceeded" and f"A max_tokens of {left} or less would fit." in refused["message"]
    assert "$" not in refused["message"]  # a plain user key: no organisation amounts
    last = alice.client().post("/api/v1/jobs", {**body, "max_tokens": left}, format="json")
    assert last.status_code == 202
    job_until_final(alice.client(), last.json()["id"])
    # Settled spend reached the limit: now the tenant is off, once, by the budget.
    wait_for(lambda: _tenant_switched_off(alice))
    assert _tenant_spent(alice) == limit
    events = KillSwitchEvent.objects.filter(switch__tenant=alice.tenant, switch__level=SwitchLevel.TENANT)
    assert [e.actor for e in events] == ["system:budget"]
    after = alice.client().post("/api/v1/jobs", body, format="json")
    assert (after.status_code, after.json()["error"]["code"]) == (402, "budget_exceeded")


def test_a_request_is_held_and_sent_at_what_fits_what_is_left(
    worker, committed_personas: Personas, micro_priced, upstream
):
    """Larger than what is left: with max_tokens, a 402 naming the max_tokens that
    fits; without, held and sent upstream with exactly that max_tokens, so what is
    held is what the provider can bill."""
    alice = committed_personas.alice
    TenantBudget.objects.create(tenant=alice.tenant, period="day", limit_usd=Decimal(50) / 1_000_000)
    client = alice.client()
    too_large = client.post(
        "/api/v1/jobs", {"model": "local-small", "messages": MESSAGES, "max_tokens": 100}, format="json"
    )
    assert too_large.status_code == 402
    error = too_large.json()["error"]
    assert (error["code"], error["param"]) == ("budget_exceeded", "max_tokens")
    assert "A max_tokens of 50 or less would fit." in error["message"]
    assert not _tenant_switched_off(alice)  # nothing was spent: nothing flips

    fitted = client.post("/api/v1/jobs", {"model": "local-small", "messages": MESSAGES}, format="json")
    assert fitted.status_code == 202
    job = job_until_final(client, fitted.json()["id"])
    assert job["status"] == "succeeded" and job["usage"]["output_tokens"] == 50
    assert chat_bodies(upstream)[-1]["max_completion_tokens"] == 50
    with tenant_context(alice.tenant):
        assert Job.objects.get(pk=job["id"]).reserved_micros == 50
    assert _tenant_spent(alice) == 50
    wait_for(lambda: _tenant_switched_off(alice))  # settled spend reached the limit


def test_the_provider_is_always_sent_the_max_tokens_that_was_held(
    worker, committed_personas: Personas, upstream, platform
):
    """No max_tokens from the caller: the catalog's output cap is sent (and held).
    A model whose tokens we only estimate (not OpenAI's tokenizer) holds its input
    with BUDGET_INPUT_ESTIMATE_MARGIN_PERCENT more."""
    alice = committed_personas.alice
    with tenant_context(alice.tenant):
        UserBudget.objects.create(user_id=alice.user_id, period="day", limit_usd=Decimal("10"))
    client = alice.client()
    job = job_until_final(
        client, client.post("/api/v1/jobs", {"model": "local-small", "messages": MESSAGES}, format="json").json()["id"]
    )
    assert job["status"] == "succeeded"
    assert chat_bodies(upstream)[-1]["max_completion_tokens"] == 1024  # local-small's max_output_tokens

    LLMModel.objects.filter(slug="local-small").update(provider="llama.cpp")
    catalog_cache_clear()
    try:
        response = client.post("/api/v1/jobs", {"model": "local-small", "messages": MESSAGES}, format="json")
        spec = model_get("local-small")
        assert spec is not None
        counted = count_message_tokens(MESSAGES, spec.encoding)
        margin = settings.BUDGET_INPUT_ESTIMATE_MARGIN_PERCENT
        with tenant_context(alice.tenant):
            held = Job.objects.get(pk=response.json()["id"]).reserved_micros
        assert held == cost_micros(
            input_tokens=-(-counted * (100 + margin) // 100),
            output_tokens=1024,
            input_price=spec.input_price_per_mtok,
            output_price=spec.output_price_per_mtok,
        )
        assert job_until_final(client, response.json()["id"])["status"] == "succeeded"
        sent = chat_bodies(upstream)[-1]
        assert sent["max_tokens"] == 1024 and "max_completion_tokens" not in sent  # servers speaking its protocol
    finally:
        LLMModel.objects.filter(slug="local-small").update(provider="openai")
        catalog_cache_clear()


def _stream_events(persona: Persona, job_id: str) -> list[dict[str, Any]]:
    key = stream_key(schema=persona.tenant.schema_name, job_id=job_id)
    return [json.loads(fields[b"d"]) for _, fields in _store().xrange(key)]


def test_cancelling_a_running_job_stops_the_call_and_charges_what_it_used(
    worker, committed_personas: Personas, upstream
):
    """The call stops at the cancel (not after its 400 tokens), what it used is
    charged and counted as spent even though the sweep ran meanwhile, and the
    job's stream ends at the cancel: nothing of the answer after it."""
    alice = committed_personas.alice
    with tenant_context(alice.tenant):
        UserBudget.objects.create(user_id=alice.user_id, period="day", limit_usd=Decimal("10"))
    upstream.configure(reply=LONG_REPLY, chunk_delay_ms=50)  # 400 tokens: 20 s if nobody stops it
    client = alice.client()
    body = {"model": "local-small", "messages": MESSAGES, "max_tokens": 400}
    job_id = client.post("/api/v1/jobs", body, format="json").json()["id"]
    wait_for(lambda: any(e["type"] == "delta" for e in _stream_events(alice, job_id)))
    assert client.post(f"/api/v1/jobs/{job_id}/cancel").status_code == 200
    from apps.jobs.holds import holds_repair as reservations_sweep

    with tenant_context(alice.tenant):
        reservations_sweep(schema=alice.tenant.schema_name)  # the beat may run at any moment
        charge = wait_for(lambda: LedgerEntry.objects.filter(job_id=job_id, kind=LedgerKind.CHARGE).first())
        job = Job.objects.get(pk=job_id)
    assert job.status == JobStatus.CANCELLED
    assert 0 < charge.output_tokens < 400  # stopped, not run to the end
    assert job.cost_micros == charge.cost_micros > 0
    wait_for(lambda: _counter(alice, "user").get("reserved") == 0)
    assert _counter(alice, "user") == {"spent": charge.cost_micros, "reserved": 0}
    assert not _store().exists(reservation_key(schema="acme", job_id=job_id))
    events = _stream_events(alice, job_id)
    assert events[-1] == {"type": "done", "status": "cancelled", "finish_reason": None}
    assert [e["type"] for e in events].count("done") == 1
    # The caller cannot read the rest of the answer by reconnecting: nothing came after.
    streamed = "".join(e["text"] for e in events if e["type"] == "delta")
    assert len(streamed.split()) < 400


def _past_its_deadline(persona: Persona, upstream: Any, model: str) -> dict[str, Any]:
    """A job on `model` with a 1-s deadline and a long, slow answer: it ends
    `failed` with `timeout`; the job as the API shows it."""
    LLMModel.objects.filter(slug=model).update(job_timeout_seconds=1)
    catalog_cache_clear()
    upstream.configure(reply=LONG_REPLY, chunk_delay_ms=50)
    try:
        client = persona.client()
        body = {"model": model, "messages": MESSAGES, "max_tokens": 400}
        job = job_until_final(client, client.post("/api/v1/jobs", body, format="json").json()["id"])
    finally:
        LLMModel.objects.filter(slug=model).update(job_timeout_seconds=None)
        catalog_cache_clear()
    assert job["status"] == "failed" and job["error"]["type"] == "timeout"
    return job


def test_a_job_past_its_models_deadline_is_stopped_charged_and_failed_once(
    worker, committed_personas: Personas, upstream
):
    """The catalog's per-model deadline stops the running call inside the job (the
    task's time limits do not work on gevent): charged for what it used, failed
    `timeout`, claimed once (no re-run)."""
    alice = committed_personas.alice
    with tenant_context(alice.tenant):
        UserBudget.objects.create(user_id=alice.user_id, period="day", limit_usd=Decimal("10"))
    job = _past_its_deadline(alice, upstream, "local-small")
    assert job["attempts"][0]["outcome"] == "stopped"
    with tenant_context(alice.tenant):
        entries = list(LedgerEntry.objects.filter(job_id=job["id"]))
        assert Job.objects.get(pk=job["id"]).attempts == 1
    assert [e.kind for e in entries] == [LedgerKind.CHARGE]  # charged, not refunded
    assert 0 < entries[0].output_tokens < 400
    wait_for(lambda: _counter(alice, "user").get("reserved") == 0)
    assert _counter(alice, "user") == {"spent": entries[0].cost_micros, "reserved": 0}
    assert _stream_events(alice, job["id"])[-1]["type"] == "error"


@contextlib.contextmanager
def _broker_unreachable() -> Iterator[None]:
    """This process's Celery publisher points at a port nothing listens on (the
    consumer of the in-process worker keeps its own connection)."""
    from aiplatform.celery import app

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead = f"redis://127.0.0.1:{probe.getsockname()[1]}/0"

    def point(url: str) -> None:
        app.conf.broker_url = url
        app._pool = None  # the pools are kept per URL: the original's is there again after
        app.amqp._producer_pool = None

    original = app.conf.broker_url
    point(dead)
    try:
        yield
    finally:
        point(original)


def test_a_broker_that_is_down_at_submission_gets_a_202_for_a_job_that_then_runs_budgeted(
    worker, platform_server, committed_personas: Personas, settings
):
    """The publish after commit fails: the job is kept queued with its hold (the
    answer, 202, says it will run), and the sweeper sends it once the broker is back;
    it then settles against the hold it kept."""
    alice = committed_personas.alice
    with tenant_context(alice.tenant):
        UserBudget.objects.create(user_id=alice.user_id, period="day", limit_usd=Decimal("10"))
    body = {"model": "local-small", "messages": MESSAGES, "max_tokens": 20}
    with _broker_unreachable(), http_client(platform_server, alice.key) as client:
        response = client.post("/api/v1/jobs", json=body)
    assert response.status_code == 202
    job_id = response.json()["id"]
    with tenant_context(alice.tenant):
        job = Job.objects.get(pk=job_id)
        assert job.status == JobStatus.QUEUED and job.reserved_micros > 0
        assert _counter(alice, "user") == {"spent": 0, "reserved": job.reserved_micros}
        settings.JOB_REQUEUE_AFTER_SECONDS = 0
        Job.objects.filter(pk=job_id).update(enqueued_at=timezone.now() - timedelta(seconds=1))
        assert jobs_requeue_stale().requeued == 1
    done = job_until_final(alice.client(), job_id)
    assert done["status"] == "succeeded"
    wait_for(lambda: _counter(alice, "user").get("reserved") == 0)
    with tenant_context(alice.tenant):
        cost = Job.objects.get(pk=job_id).cost_micros
    assert cost is not None
    assert _counter(alice, "user")["spent"] == cost > 0


def test_a_broker_error_after_success_still_lands_the_cost_in_spent(committed_personas: Personas, upstream):
    """Between the job's success and the end of its accounting the broker fails (its
    webhook cannot be published: logged): the hold was settled at the actual cost
    first, and nothing after it can release it."""
    alice = committed_personas.alice
    limit = Decimal("10")
    with tenant_context(alice.tenant):
        UserBudget.objects.create(user_id=alice.user_id, period="day", limit_usd=limit)
        job = Job.objects.create(
            user_id=alice.user_id,
            model="local-small",
            messages=MESSAGES,
            params={"max_tokens": 20},
            input_tokens_estimate=count_message_tokens(MESSAGES),
            webhook_url="http://127.0.0.1:9/hook",
        )
        principal = Principal(tenant_schema="acme", user_id=alice.user_id, email=alice.email, tier="standard",
                              key_id=0, key_prefix="")  # fmt: skip
        assert budget_reserve(principal=principal, job_id=job.pk, amount_micros=1000)
        from tasks.jobs import job_run

        # The task's own body, in this thread; the broker error is re-raised (for Sentry).
        with _broker_unreachable(), contextlib.suppress(Exception):
            job_run.run(job_id=str(job.pk), model="local-small")
        job.refresh_from_db()
        charge = LedgerEntry.objects.get(job_id=job.pk, kind=LedgerKind.CHARGE)
    assert job.status == JobStatus.SUCCEEDED and job.cost_micros == charge.cost_micros > 0
    assert _counter(alice, "user") == {"spent": charge.cost_micros, "reserved": 0}


def test_settlement_is_exactly_once_whatever_the_order(committed_personas: Personas, platform):
    """A release (the sweep, a failure handler) before the worker's settle, settles
    repeated, a release after: `spent` ends with the actual cost, once."""
    from apps.billing.budgets import budget_release, budget_settle

    alice = committed_personas.alice
    with tenant_context(alice.tenant):
        UserBudget.objects.create(user_id=alice.user_id, period="day", limit_usd=Decimal("1"))
    principal = Principal(tenant_schema="acme", user_id=alice.user_id, email=alice.email, tier="standard",
                          key_id=0, key_prefix="")  # fmt: skip
    job_id = uuid.uuid4()
    with tenant_context(alice.tenant):
        assert budget_reserve(principal=principal, job_id=job_id, amount_micros=500)
    assert budget_release(schema="acme", job_id=job_id)
    assert _counter(alice, "user") == {"spent": 0, "reserved": 0}
    assert budget_settle(schema="acme", job_id=job_id, actual_micros=120)  # the late worker
    assert not budget_settle(schema="acme", job_id=job_id, actual_micros=120)  # a retry
    assert not budget_release(schema="acme", job_id=job_id)
    assert _counter(alice, "user") == {"spent": 120, "reserved": 0}


def test_unfinished_jobs_cannot_be_deleted_and_a_deleted_running_job_is_still_charged(
    worker, committed_personas: Personas, upstream
):
    alice = committed_personas.alice
    tenant = alice.tenant
    with tenant_context(tenant):
        UserBudget.objects.create(user_id=alice.user_id, period="day", limit_usd=Decimal("10"))
        admin = get_user_model().objects.create_superuser("acme-admin", "a@acme.test", "pw-tenant-1")
    upstream.configure(reply=" ".join(LONG_REPLY.split()[:60]), chunk_delay_ms=20)
    api = alice.client()
    body = {"model": "local-small", "messages": MESSAGES, "max_tokens": 60}
    job_id = api.post("/api/v1/jobs", body, format="json").json()["id"]
    wait_for(lambda: any(e["type"] == "delta" for e in _stream_events(alice, job_id)))

    site = Client(HTTP_HOST="acme.testserver")
    with tenant_context(tenant):
        site.force_login(admin)
    assert site.get(f"/admin/jobs/job/{job_id}/delete/").status_code == 403
    assert site.post(f"/admin/jobs/job/{job_id}/delete/", {"post": "yes"}).status_code == 403
    site.post("/admin/jobs/job/", {"action": "delete_selected", "_selected_action": [job_id], "post": "yes"})
    with tenant_context(tenant):
        assert Job.objects.filter(pk=job_id).exists()
        # Before this fix an admin could; the row going mid-run must not lose the charge.
        Job.objects.filter(pk=job_id).delete()
        charge = wait_for(lambda: LedgerEntry.objects.filter(job_id=job_id, kind=LedgerKind.CHARGE).first())
    assert charge.output_tokens == 60
    wait_for(lambda: _counter(alice, "user").get("reserved") == 0)
    assert _counter(alice, "user") == {"spent": charge.cost_micros, "reserved": 0}


def test_a_hold_made_before_midnight_settles_into_its_own_day(committed_personas: Personas, upstream):
    """The reservation names its counters and its time: settled after midnight, the
    charge lands in the day it was held in (counter, ledger date, rollup day), and a
    counter rebuilt from the ledger agrees."""
    alice = committed_personas.alice
    with tenant_context(alice.tenant):
        UserBudget.objects.create(user_id=alice.user_id, period="day", limit_usd=Decimal("1"))
    principal = Principal(tenant_schema="acme", user_id=alice.user_id, email=alice.email, tier="standard",
                          key_id=0, key_prefix="")  # fmt: skip
    yesterday = period_window("day").start - timedelta(seconds=1)
    with tenant_context(alice.tenant):
        job = Job.objects.create(
            user_id=alice.user_id,
            model="local-small",
            messages=MESSAGES,
            params={"max_tokens": 20},
            input_tokens_estimate=count_message_tokens(MESSAGES),
            created_at=yesterday,
        )
        from apps.billing.budgets import budget_hold

        assert budget_hold(principal=principal, job_id=job.pk, amount_micros=1000, now=yesterday).amount == 1000
        job_execute(job_id=job.pk)  # settled now, today
        charge = LedgerEntry.objects.get(job_id=job.pk, kind=LedgerKind.CHARGE)
    assert _counter(alice, "user", at=yesterday) == {"spent": charge.cost_micros, "reserved": 0}
    assert _counter(alice, "user") == {}  # today's counter never saw it
    assert charge.created_at.date() == yesterday.date()
    from apps.controls.models import SpendRollup

    assert SpendRollup.objects.get(tenant=alice.tenant, model="local-small").day == yesterday.date()
    # Rebuilt from the ledger: today's counter starts at 0.
    _store().delete(counter_key(schema="acme", scope="user", user_id=alice.user_id, window=period_window("day")))
    with tenant_context(alice.tenant):
        assert budget_reserve(principal=principal, job_id=uuid.uuid4(), amount_micros=1)
    assert _counter(alice, "user") == {"spent": 0, "reserved": 1}


def test_a_plain_user_key_learns_only_what_concerns_its_user(committed_personas: Personas, platform):
    """The organisation's budget is used up: a plain user key is told so, with no
    amounts; a tenant admin key sees them; a user's own budget shows its amounts."""
    alice, bob = committed_personas.alice, committed_personas.bob
    TenantBudget.objects.create(tenant=alice.tenant, period="month", limit_usd=Decimal("0.000500"))
    with tenant_context(alice.tenant):
        ledger_record(kind=LedgerKind.ADJUSTMENT, user_id=bob.user_id, model="local-small", cost=500)
        from apps.accounts.models import User

        _, admin_key = api_key_create(user=User.objects.get(pk=bob.user_id), name="ops", is_admin=True)
    body = {"model": "routing-probe", "messages": MESSAGES, "max_tokens": 5}
    plain = alice.client().post("/api/v1/jobs", body, format="json").json()["error"]
    assert plain["code"] == "budget_exceeded"
    assert plain["message"].startswith("Your organisation's monthly budget is used up; it resets at ")
    assert "$" not in plain["message"]
    # (The hard limit was reached with the organisation's settled spend: it is off now.)
    switched = alice.client().post("/api/v1/jobs", body, format="json").json()["error"]
    assert switched["code"] == "budget_exceeded" and "$" not in switched["message"]
    KillSwitch.objects.filter(tenant=alice.tenant).update(active=False)
    from apps.controls.switches import switches_cache_clear

    switches_cache_clear()
    admin = Client(HTTP_AUTHORIZATION=f"Bearer {admin_key}")
    shown = admin.post("/api/v1/jobs", body, content_type="application/json").json()["error"]
    assert "monthly budget of $0.0005 is used up" in shown["message"]

    TenantBudget.objects.filter(tenant=alice.tenant).delete()
    with tenant_context(alice.tenant):
        UserBudget.objects.create(user_id=alice.user_id, period="day", limit_usd=Decimal("0.000001"))
    own = alice.client().post("/api/v1/jobs", body, format="json").json()["error"]
    assert own["code"] == "budget_exceeded" and "of your daily budget ($0.000001 of $0.000001 left)" in own["message"]
    _store().delete("llm.routing-probe")


def _silent_provider_cancel(persona: Persona, upstream: Any, model: str) -> LedgerEntry:
    """Cancel a running job whose provider has sent its first (empty) chunk and then
    says nothing for a minute: only closing the response can stop the call."""
    with tenant_context(persona.tenant):
        UserBudget.objects.create(user_id=persona.user_id, period="day", limit_usd=Decimal("10"))
    upstream.configure(chunk_delay_ms=60_000)
    client = persona.client()
    job_id = client.post("/api/v1/jobs", {"model": model, "messages": MESSAGES}, format="json").json()["id"]
    with tenant_context(persona.tenant):
        wait_for(lambda: Job.objects.get(pk=job_id).status == JobStatus.RUNNING)
    wait_for(lambda: upstream.stats()["chat_per_model"].get(model) == 1)  # the request is out
    assert client.post(f"/api/v1/jobs/{job_id}/cancel").status_code == 200
    with tenant_context(persona.tenant):
        # Well before the request timeout (10 s in tests) would end the call.
        charge: LedgerEntry = wait_for(
            lambda: LedgerEntry.objects.filter(job_id=job_id, kind=LedgerKind.CHARGE).first(), timeout=5
        )
    assert charge.output_tokens == 0 and charge.input_tokens > 0  # the prompt was sent: it is paid for
    wait_for(lambda: _counter(persona, "user").get("reserved") == 0)
    assert _counter(persona, "user") == {"spent": charge.cost_micros, "reserved": 0}
    return charge


def test_a_cancel_stops_a_call_whose_provider_is_silent(worker, committed_personas: Personas, upstream):
    _silent_provider_cancel(committed_personas.alice, upstream, "local-small")


gevent_worker = test_gevent_worker.gevent_worker  # the production worker: a `-P gevent` process


def test_a_cancel_stops_a_silent_call_on_the_gevent_worker(
    platform_server, gevent_worker, committed_personas: Personas, upstream
):
    _silent_provider_cancel(committed_personas.alice, upstream, "pool-probe")


def test_a_busy_budget_is_a_short_429_on_v1(platform_server, committed_personas: Personas):
    """Holds in flight (a queued job nobody runs) take the room: OpenAI SDKs get a
    429 `budget_busy` with a Retry-After of seconds, which they retry; the budget is
    not spent, so nothing is switched off."""
    import openai

    alice = committed_personas.alice
    spec = model_get("routing-probe")
    assert spec is not None
    body = {"model": "routing-probe", "messages": MESSAGES, "max_tokens": 50}
    with tenant_context(alice.tenant):
        UserBudget.objects.create(user_id=alice.user_id, period="day", limit_usd=Decimal("0.000050"))
    # 32 micro-dollars held of 50: another hold of 32 fits what is spent, not what is held.
    assert alice.client().post("/api/v1/jobs", body, format="json").status_code == 202
    sdk = openai.OpenAI(base_url=f"{platform_server.url}/v1", api_key=alice.key, max_retries=0)
    try:
        sdk.chat.completions.create(**body)  # type: ignore[call-overload]
        raise AssertionError("admitted past the holds")
    except openai.RateLimitError as caught:
        assert caught.status_code == 429 and caught.code == "budget_busy"
        assert caught.response.headers["Retry-After"] == str(settings.BUDGET_BUSY_RETRY_SECONDS)
        assert "$" in caught.message  # her own budget: its amounts are hers to see
    assert not KillSwitch.objects.filter(active=True).exists()
    _store().delete("llm.routing-probe")


def test_the_models_deadline_holds_on_the_gevent_worker(
    platform_server, gevent_worker, committed_personas: Personas, upstream
):
    """Where the soft time limit does nothing: the job's own deadline (the catalog's,
    per model) still stops the call; charged, failed `timeout`, claimed once."""
    alice = committed_personas.alice
    job = _past_its_deadline(alice, upstream, "pool-probe")
    with tenant_context(alice.tenant):
        entries = list(LedgerEntry.objects.filter(job_id=job["id"]))
        assert Job.objects.get(pk=job["id"]).attempts == 1
    assert [e.kind for e in entries] == [LedgerKind.CHARGE] and 0 < entries[0].output_tokens < 400


def test_a_cancel_and_the_worker_settling_the_same_job_give_its_tokens_back_once(committed_personas: Personas):
    """A cancel that races the worker: both settle the job's rate-limit tokens (the
    cancel as for a queued job, the worker after its call). The tokens come back
    once. Two jobs drain the bucket, so a second refund would show below the cap."""
    from apps.jobs.lifecycle import job_cancel
    from apps.jobs.settlement import job_tokens_settle as _reconcile_rate_limits
    from apps.ratelimit.models import UserRateLimit

    alice = committed_personas.alice
    messages = [{"role": "user", "content": "count my tokens"}]
    tokens = count_message_tokens(messages) + 100
    with tenant_context(alice.tenant):
        UserRateLimit.objects.create(user_id=alice.user_id, tokens_per_minute=60, burst_tokens=3 * tokens + 10)
    key = f"aip:{{{alice.tenant.schema_name}}}:rl:user:{alice.user_id}"
    client = alice.client()
    body = {"model": "routing-probe", "messages": messages, "max_tokens": 100}  # no worker takes routing-probe
    ids = [client.post("/api/v1/jobs", body, format="json").json()["id"] for _ in range(2)]
    before = float(_store().hget(key, "tokens"))
    with tenant_context(alice.tenant):
        principal = Principal(
            tenant_schema=alice.tenant.schema_name,
            user_id=alice.user_id,
            email=alice.email,
            tier="standard",
            key_id=0,
            key_prefix="",
        )
        job_cancel(principal=principal, job_id=ids[0])  # gives the tokens back (it never ran)
        job = Job.objects.select_related("user").get(pk=ids[0])
        spec = model_get("routing-probe")
        assert spec is not None
        _reconcile_rate_limits(job=job, spec=spec, used=0)  # the worker's settle, late
    after = float(_store().hget(key, "tokens"))
    assert tokens - 5 <= after - before <= tokens + 5, (before, after, tokens)
    _store().delete("llm.routing-probe")


def test_a_succeeded_job_failed_by_a_later_step_keeps_its_hold_for_the_sweep(committed_personas: Personas):
    """The task's last resort (a later step raised after the answer was stored, with
    the settlement not landed) must not give the hold back at 0: the sweep settles
    it from the job's recorded cost."""
    from apps.jobs.holds import holds_repair as reservations_sweep
    from apps.jobs.lifecycle import job_fail_unexpectedly

    alice = committed_personas.alice
    with tenant_context(alice.tenant):
        UserBudget.objects.create(user_id=alice.user_id, period="day", limit_usd=Decimal("10"))
        job = Job.objects.create(
            user_id=alice.user_id,
            model="local-small",
            messages=MESSAGES,
            status=JobStatus.SUCCEEDED,
            cost_micros=700,
            input_tokens_estimate=count_message_tokens(MESSAGES),
        )
        principal = Principal(tenant_schema="acme", user_id=alice.user_id, email=alice.email, tier="standard",
                              key_id=0, key_prefix="")  # fmt: skip
        assert budget_reserve(principal=principal, job_id=job.pk, amount_micros=1000)
        job_fail_unexpectedly(job_id=job.pk, error_type="internal_error", message="a later step raised")
        assert _store().exists(reservation_key(schema="acme", job_id=job.pk))
        assert reservations_sweep(schema="acme")["settled"] == 1
        job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED
    assert _counter(alice, "user") == {"spent": 700, "reserved": 0}
