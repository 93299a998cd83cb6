"""GET /metrics: breaker states and cache counters in Prometheus's format, read
from the shared state in Redis (so any web process answers for all)."""

from __future__ import annotations

from django.test import Client

from tests.support import Personas, job_until_final

BODY = {"model": "local-small", "messages": [{"role": "user", "content": "metrics"}], "temperature": 0}


def test_metrics_show_breakers_and_cache_counters(worker, committed_personas: Personas, upstream, settings):
    settings.BREAKER_FAILURES = 1
    client = committed_personas.alice.client()
    first = job_until_final(client, client.post("/api/v1/jobs", BODY, format="json").json()["id"])
    assert first["status"] == "succeeded"
    assert client.post("/api/v1/jobs", BODY, format="json").json()["cached"] == "exact"
    upstream.add_faults({"model": "local-small", "status": 500, "message": "down"})
    other = {**BODY, "messages": [{"role": "user", "content": "this one fails"}]}
    assert job_until_final(client, client.post("/api/v1/jobs", other, format="json").json()["id"])["status"] == "failed"

    page = Client().get("/metrics")
    assert page.status_code == 200
    assert page["Content-Type"].startswith("text/plain")
    text = page.content.decode()
    assert 'aip_circuit_breaker_state{model="local-small"} 1.0' in text  # opened by the one failure
    assert 'aip_circuit_breaker_state{model="premium-large"} 0.0' in text
    assert 'aip_cache_events_total{kind="exact",outcome="hit",tenant="acme"} 1.0' in text
    assert 'aip_cache_events_total{kind="exact",outcome="miss",tenant="acme"} 2.0' in text


def test_metrics_are_not_served_on_a_tenants_host(committed_personas: Personas):
    assert Client(HTTP_HOST="acme.testserver").get("/metrics").status_code == 404


def test_metrics_can_require_a_token(committed_db, settings):
    settings.METRICS_TOKEN = "scrape-secret"
    assert Client().get("/metrics").status_code == 401
    assert Client().get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 401
    assert Client().get("/metrics", HTTP_AUTHORIZATION="Bearer scrape-secret").status_code == 200
