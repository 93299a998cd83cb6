"""Completion webhooks: signed deliveries to a real local receiver, retries with
backoff, refusal of private addresses."""

from __future__ import annotations

import json

import pytest

from apps.tenants.models import Tenant
from tests.support import Personas, job_until_final, verify_webhook, wait_for

CHAT = {"model": "local-small", "messages": [{"role": "user", "content": "notify me"}]}


def test_finished_job_gets_one_signed_delivery(worker, committed_personas: Personas, receiver):
    client = committed_personas.alice.client()
    job = client.post("/api/v1/jobs", {**CHAT, "webhook": {"url": receiver.url}}, format="json").json()
    final = job_until_final(client, job["id"])
    wait_for(lambda: receiver.received)
    secret = Tenant.objects.get(schema_name="acme").webhook_secret
    payload = verify_webhook(secret, receiver.received[0])
    assert payload["id"] == job["id"]
    assert payload["status"] == "succeeded"
    assert payload["output"] == final["output"] == "Echo: notify me"
    assert payload["usage"]["output_tokens"] > 0
    detail = wait_for(lambda: (d := client.get(f"/api/v1/jobs/{job['id']}").json())["webhook"]["delivered"] and d)
    assert [d["status_code"] for d in detail["webhook"]["deliveries"]] == [204]
    assert len(receiver.received) == 1


def test_receiver_failing_twice_gets_the_delivery_on_the_third_try(worker, committed_personas: Personas, receiver):
    receiver.fail_next = 2
    client = committed_personas.alice.client()
    job = client.post("/api/v1/jobs", {**CHAT, "webhook": {"url": receiver.url}}, format="json").json()
    detail = wait_for(
        lambda: (d := client.get(f"/api/v1/jobs/{job['id']}").json())["webhook"]["delivered"] and d, timeout=20
    )
    assert [d["status_code"] for d in detail["webhook"]["deliveries"]] == [500, 500, 204]
    assert len(receiver.received) == 3


def test_failed_job_is_delivered_with_its_error(worker, committed_personas: Personas, receiver, upstream):
    upstream.add_faults({"model": "local-small", "status": 500, "message": "kaput"})
    client = committed_personas.alice.client()
    job = client.post("/api/v1/jobs", {**CHAT, "webhook": {"url": receiver.url}}, format="json").json()
    wait_for(lambda: receiver.received)
    payload = json.loads(receiver.received[0]["body"])
    assert payload["id"] == job["id"]
    assert payload["status"] == "failed"
    assert "kaput" in payload["error"]["message"]


@pytest.mark.parametrize(
    "url", ["http://10.0.0.1/hook", "http://192.168.1.5/hook", "http://169.254.169.254/latest", "ftp://example.com/x"]
)
def test_private_or_non_http_webhook_urls_are_refused(personas: Personas, url):
    response = personas.alice.client().post("/api/v1/jobs", {**CHAT, "webhook": {"url": url}}, format="json")
    assert response.status_code == 400, response.content
    assert response.json()["error"]["param"] == "webhook.url"
