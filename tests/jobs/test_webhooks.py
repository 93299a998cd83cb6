"""Completion webhooks: signed deliveries to a real local receiver, retries with
backoff, refusal of private addresses."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

import pytest

from apps.tenants.models import Tenant
from devtools.serve import ThreadedUvicorn
from tests.support import Personas, job_until_final, wait_for

CHAT = {"model": "local-small", "messages": [{"role": "user", "content": "notify me"}]}


class Receiver:
    """An ASGI webhook receiver that records what it gets and can fail on purpose."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.fail_next = 0
        self.url = ""

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        self.received.append({"headers": headers, "body": body})
        status = 500 if self.fail_next > 0 else 204
        self.fail_next -= 1
        await send({"type": "http.response.start", "status": status, "headers": [(b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})


@pytest.fixture
def receiver():
    app = Receiver()
    server = ThreadedUvicorn(app, name="webhook-receiver")
    server.start()
    app.url = f"{server.url}/hooks/jobs"
    yield app
    server.stop()


def _verify(secret: str, delivery: dict[str, Any]) -> dict[str, Any]:
    headers, body = delivery["headers"], delivery["body"]
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    key = base64.b64decode(secret.removeprefix("whsec_"))
    expected = "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    assert hmac.compare_digest(headers["webhook-signature"], expected)
    return json.loads(body)


def test_finished_job_gets_one_signed_delivery(worker, committed_personas: Personas, receiver):
    client = committed_personas.alice.client()
    job = client.post("/api/v1/jobs", {**CHAT, "webhook": {"url": receiver.url}}, format="json").json()
    final = job_until_final(client, job["id"])
    wait_for(lambda: receiver.received)
    secret = Tenant.objects.get(schema_name="acme").webhook_secret
    payload = _verify(secret, receiver.received[0])
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
