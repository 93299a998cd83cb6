"""The Prometheus series an operator alerts on, after real jobs through the real
worker: tokens, cost and duration with their labels, rejections counted, queue
depth read from the broker, and process groups merged (multiprocess mode)."""

from __future__ import annotations

import subprocess
import sys
from decimal import Decimal

import redis
from django.conf import settings
from django.test import Client
from prometheus_client import generate_latest

from apps.controls.models import RateLimit, TenantBudget
from tests.support import Personas, Samples, job_until_final, metric_samples, metric_value, wait_for

BODY = {"model": "local-small", "messages": [{"role": "user", "content": "count me"}], "max_tokens": 32}


def scrape() -> Samples:
    page = Client().get("/metrics")
    assert page.status_code == 200
    return metric_samples(page.content.decode())


def test_a_job_shows_tokens_cost_and_duration_with_their_labels(worker, committed_personas: Personas):
    before = scrape()
    client = committed_personas.alice.client()
    job = job_until_final(client, client.post("/api/v1/jobs", BODY, format="json").json()["id"])
    assert job["status"] == "succeeded"

    def counted() -> dict | None:  # the worker counts the job just after it is stored as succeeded
        now = scrape()
        done = metric_value(now, "aip_jobs_total", status="succeeded") > metric_value(
            before, "aip_jobs_total", status="succeeded"
        )
        return now if done else None

    after = wait_for(counted)

    def delta(name: str, **labels: str) -> float:
        return metric_value(after, name, **labels) - metric_value(before, name, **labels)

    genai = {"gen_ai_operation_name": "chat", "gen_ai_provider_name": "openai", "model": "local-small"}
    assert delta("gen_ai_client_token_usage_sum", gen_ai_token_type="input", **genai) == job["usage"]["input_tokens"]
    assert delta("gen_ai_client_token_usage_sum", gen_ai_token_type="output", **genai) == job["usage"]["output_tokens"]
    assert delta("gen_ai_client_token_usage_count", gen_ai_token_type="input", **genai) == 1
    assert delta("gen_ai_client_operation_duration_seconds_count", outcome="ok", **genai) == 1
    assert delta("gen_ai_client_operation_duration_seconds_sum", outcome="ok", **genai) > 0
    assert delta("gen_ai_client_operation_time_to_first_chunk_seconds_count", **genai) == 1
    cost = Decimal(job["usage"]["input_tokens"] * 150_000 + job["usage"]["output_tokens"] * 600_000) / 10**12
    assert abs(Decimal(str(delta("aip_cost_usd_total", tenant="acme", model="local-small"))) - cost) < Decimal("1e-6")
    assert delta("aip_jobs_total", status="queued") == 1
    assert delta("aip_jobs_total", status="succeeded") == 1
    assert metric_value(after, "aip_queue_depth", queue="llm.local-small") == 0  # the worker took it
    assert ("aip_jobs_in_flight", frozenset({("model", "local-small")})) in after


def test_rejections_count_by_bucket_and_budget(committed_personas: Personas):
    alice, carol = committed_personas.alice, committed_personas.carol
    RateLimit.objects.create(tenant=alice.tenant, tokens_per_minute=60, burst_tokens=60)  # one request's worth
    TenantBudget.objects.create(tenant=carol.tenant, period="month", limit_usd=Decimal("0.000001"))
    # No worker serves routing-probe: the first job's tokens stay taken. With the
    # prompt, a request is more than half the burst.
    body = {**BODY, "model": "routing-probe", "max_tokens": 40}
    assert alice.client().post("/api/v1/jobs", body, format="json").status_code == 202
    before = scrape()
    assert alice.client().post("/api/v1/jobs", body, format="json").status_code == 429
    assert carol.client().post("/api/v1/jobs", body, format="json").status_code == 402
    after = scrape()
    redis.Redis.from_url(settings.CELERY_BROKER_URL).delete("llm.routing-probe")
    for name, labels in (
        ("aip_ratelimit_rejections_total", {"bucket": "tenant_tokens", "tenant": "acme"}),
        ("aip_budget_rejections_total", {"scope": "tenant", "period": "month", "tenant": "globex"}),
    ):
        assert metric_value(after, name, **labels) - metric_value(before, name, **labels) == 1, name


def test_queue_depth_counts_what_waits_for_a_worker(committed_personas: Personas):
    """No worker serves routing-probe: its jobs wait in its queue."""
    broker = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    broker.delete("llm.routing-probe")
    client = committed_personas.alice.client()
    for _ in range(2):
        assert client.post("/api/v1/jobs", {**BODY, "model": "routing-probe"}, format="json").status_code == 202
    assert metric_value(scrape(), "aip_queue_depth", queue="llm.routing-probe") == 2
    broker.delete("llm.routing-probe")
    assert metric_value(scrape(), "aip_queue_depth", queue="llm.routing-probe") == 0


RECORD = """
from apps.observability import metrics
metrics.record_job_status("queued")
metrics.record_cost("acme", "local-small", 1_500_000)
with metrics.jobs_in_flight("local-small").track_inprogress():
    pass
"""


def test_processes_sharing_a_multiprocess_dir_are_merged(tmp_path, monkeypatch):
    """uvicorn --workers N: each process writes its own files; any one serves them all."""
    for _ in range(2):
        subprocess.run(
            [sys.executable, "-c", RECORD], env={"PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}, check=True, timeout=60
        )
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    from apps.observability.metrics import registry

    samples = metric_samples(generate_latest(registry()).decode())
    assert metric_value(samples, "aip_jobs_total", status="queued") == 2
    assert metric_value(samples, "aip_cost_usd_total", tenant="acme", model="local-small") == 3.0
    assert metric_value(samples, "aip_jobs_in_flight", model="local-small") == 0
