"""Webhook URLs against SSRF: the delivery connects to the address that was
checked (no second resolution), follows no redirect, calls only http(s), bounds
its DNS lookup, and shows the tenant status codes and fixed error words only."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from apps.core import webhooks
from apps.tenants.models import Tenant
from devtools.serve import ThreadedUvicorn
from tests.support import Personas, Receiver, read_body, wait_for

CHAT = {"model": "local-small", "messages": [{"role": "user", "content": "notify me"}]}


class Redirector:
    """Answers every webhook with a redirect to `location`."""

    def __init__(self, location: str) -> None:
        self.location = location
        self.hits = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        await read_body(receive)
        self.hits += 1
        headers = [(b"location", self.location.encode()), (b"content-length", b"0")]
        await send({"type": "http.response.start", "status": 302, "headers": headers})
        await send({"type": "http.response.body", "body": b""})


@pytest.fixture
def redirector(receiver: Receiver):
    app = Redirector(receiver.url)
    server = ThreadedUvicorn(app, name="webhook-redirector")
    server.start()
    app.url = f"{server.url}/hooks/jobs"  # type: ignore[attr-defined]
    yield app
    server.stop()


def _delivered(client: Any, job_id: str) -> dict[str, Any]:
    return wait_for(lambda: (d := client.get(f"/api/v1/jobs/{job_id}").json())["webhook"]["deliveries"] and d)


def test_a_redirect_to_loopback_is_not_followed(worker, committed_personas: Personas, redirector, receiver, settings):
    settings.WEBHOOK_MAX_ATTEMPTS = 1
    client = committed_personas.alice.client()
    job = client.post("/api/v1/jobs", {**CHAT, "webhook": {"url": redirector.url}}, format="json").json()
    detail = _delivered(client, job["id"])
    assert redirector.hits == 1
    assert detail["webhook"]["delivered"] is False
    assert [(d["status_code"], d["error"]) for d in detail["webhook"]["deliveries"]] == [(302, None)]
    assert receiver.received == []  # the redirect's target (loopback) was never called


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/hook",
        "gopher://example.com:70/_x",
        "file:///etc/passwd",
        "dict://example.com:11211/stat",
        "http://example.com:99999/hook",
        "http:///hook",
    ],
)
def test_a_non_http_or_malformed_url_is_refused_at_submission(personas: Personas, url):
    response = personas.alice.client().post("/api/v1/jobs", {**CHAT, "webhook": {"url": url}}, format="json")
    assert response.status_code == 400, response.content
    assert response.json()["error"]["param"] == "webhook.url"


def test_a_non_http_url_is_refused_at_delivery(worker, committed_personas: Personas, receiver):
    """The tenant's default URL is the operator's, not checked at submission: the
    delivery refuses a non-HTTP scheme itself, and calls nothing."""
    tenant = Tenant.objects.get(schema_name="acme")
    tenant.webhook_url = receiver.url.replace("http://", "ftp://")
    tenant.save(update_fields=["webhook_url"])
    try:
        client = committed_personas.alice.client()
        job = client.post("/api/v1/jobs", CHAT, format="json").json()
        detail = _delivered(client, job["id"])
    finally:
        tenant.webhook_url = ""
        tenant.save(update_fields=["webhook_url"])
    assert [(d["status_code"], d["error"]) for d in detail["webhook"]["deliveries"]] == [(None, "invalid_url")]
    assert receiver.received == []


def test_dns_rebinding_cannot_reach_loopback(worker, committed_personas: Personas, receiver, settings, monkeypatch):
    """The checks (at submission and at delivery) see an allowed address, any later
    lookup would see loopback (where the receiver listens). The delivery connects
    to the checked address, so the receiver hears nothing; and the attempt shows a
    fixed word, not the connection's error text."""
    settings.WEBHOOK_ALLOWED_NETWORKS = ["127.0.0.2/32"]  # stands for a public address here
    settings.WEBHOOK_MAX_ATTEMPTS = 1
    lookups: list[str] = []

    def rebinding(host: str, port: int) -> list[str]:
        lookups.append(host)
        return ["127.0.0.2"] if len(lookups) <= 2 else ["127.0.0.1"]

    monkeypatch.setattr(webhooks, "resolver", rebinding)
    url = receiver.url.replace("127.0.0.1", "localhost")  # the system resolver says loopback too
    client = committed_personas.alice.client()
    response = client.post("/api/v1/jobs", {**CHAT, "webhook": {"url": url}}, format="json")
    assert response.status_code == 202, response.content
    detail = _delivered(client, response.json()["id"])
    assert lookups == ["localhost", "localhost"]  # submission, delivery: nothing resolved it again
    assert [(d["status_code"], d["error"]) for d in detail["webhook"]["deliveries"]] == [(None, "no_response")]
    assert receiver.received == []


def test_every_address_of_the_host_is_checked(personas: Personas, settings, monkeypatch):
    settings.WEBHOOK_ALLOWED_NETWORKS = []
    monkeypatch.setattr(webhooks, "resolver", lambda host, port: ["93.184.215.14", "127.0.0.1"])
    response = personas.alice.client().post(
        "/api/v1/jobs", {**CHAT, "webhook": {"url": "https://two-faced.example/hook"}}, format="json"
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["code"], error["param"]) == ("webhook_url_not_allowed", "webhook.url")
    assert "127.0.0.1" not in error["message"]


def test_a_slow_resolver_does_not_hold_the_submission(personas: Personas, settings, monkeypatch):
    settings.WEBHOOK_DNS_TIMEOUT_SECONDS = 1
    release = threading.Event()

    def hanging(host: str, port: int) -> list[str]:
        release.wait(30)
        return ["93.184.215.14"]

    monkeypatch.setattr(webhooks, "resolver", hanging)
    try:
        response = personas.alice.client().post(
            "/api/v1/jobs", {**CHAT, "webhook": {"url": "https://slow-dns.example/hook"}}, format="json"
        )
    finally:
        release.set()
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "webhook.url"
    assert "did not resolve within 1 s" in error["message"]


def test_one_tenants_hanging_lookups_cannot_fail_another_tenants_checks(personas: Personas, settings, monkeypatch):
    """Lookups outlive their callers' waits (getaddrinfo has no timeout): alice's
    hosts on a black-holed name server may hold at most her share of the lookup
    threads, so carol's webhook still resolves."""
    settings.WEBHOOK_DNS_TIMEOUT_SECONDS = 0.2
    release = threading.Event()

    def resolve(host: str, port: int) -> list[str]:
        if host.endswith(".blackhole.example"):
            release.wait(30)
        return ["93.184.215.14"]

    monkeypatch.setattr(webhooks, "resolver", resolve)
    alice, carol = personas.alice.client(), personas.carol.client()
    try:
        answers = [
            alice.post(
                "/api/v1/jobs", {**CHAT, "webhook": {"url": f"https://h{n}.blackhole.example/hook"}}, format="json"
            )
            for n in range(webhooks.LOOKUP_THREADS + 4)
        ]
        assert {a.status_code for a in answers} == {400}
        assert "lookups of yours are still running" in answers[-1].json()["error"]["message"]
        ok = carol.post("/api/v1/jobs", {**CHAT, "webhook": {"url": "https://carol.example/hook"}}, format="json")
    finally:
        release.set()
    assert ok.status_code == 202, ok.json()


def test_the_operator_admin_refuses_a_tenants_non_http_or_private_urls(db, platform):
    from django.forms.models import model_to_dict

    from apps.tenants.admin import TenantForm

    tenant = Tenant.objects.get(schema_name="acme")
    data = {**model_to_dict(tenant), "alert_webhook_url": "ftp://example.com/x", "webhook_url": "http://10.0.0.1/x"}
    form = TenantForm(data=data, instance=tenant)
    assert not form.is_valid()
    assert set(form.errors) == {"alert_webhook_url", "webhook_url"}


def test_a_budget_alert_follows_no_redirect(committed_db, redirector, receiver):
    from apps.billing.alerts import alert_deliver

    tenant = Tenant.objects.get(schema_name="acme")
    tenant.alert_webhook_url = redirector.url
    tenant.save(update_fields=["alert_webhook_url"])
    payload = {
        "type": "budget.soft",
        "tenant": "acme",
        "user": None,
        "period": "day",
        "period_start": "2026-01-01T00:00:00+00:00",
        "period_end": "2026-01-02T00:00:00+00:00",
        "limit_usd": "1.00",
        "spent_usd": "0.80",
        "attempt": 2,  # no log line or mail: the webhook only
    }
    try:
        with pytest.raises(webhooks.WebhookFailed) as failed:
            alert_deliver(payload)
    finally:
        tenant.alert_webhook_url = ""
        tenant.save(update_fields=["alert_webhook_url"])
    assert failed.value.status == 302  # a failure: the alert task retries it
    assert redirector.hits == 1
    assert receiver.received == []


# --- Queues: webhooks on their own lane, housekeeping never behind them -------


class StalledReceiver:
    """Holds every webhook request open until released (a receiver that never answers)."""

    def __init__(self) -> None:
        self.waiting = 0
        self.release = threading.Event()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        import asyncio

        await read_body(receive)
        self.waiting += 1
        while not self.release.is_set():
            await asyncio.sleep(0.05)
        await send({"type": "http.response.start", "status": 204, "headers": [(b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})


def test_webhook_tasks_route_to_the_webhooks_queue():
    from tasks.queues import route_task

    for name in ("webhooks.send", "alerts.send"):
        assert route_task(name, (), {}, {})["queue"].name == "webhooks"
    for name in ("jobs.requeue_stale", "budgets.sweep", "cache.evict", "budgets.reset"):
        assert route_task(name, (), {}, {})["queue"].name == "default"


@pytest.fixture
def lane_workers(platform, committed_db, tmp_path):
    """The Procfile's housekeeping and webhooks workers as their own processes, on a
    broker database of their own (the in-process test worker never sees their
    messages). Yields the broker URL."""
    import subprocess

    import redis
    from django.conf import settings as django_settings

    from devtools.run import expand, parse_procfile
    from devtools.serve import stop_process
    from tests.support import ROOT, worker_process_env

    broker = django_settings.REDIS_URL.rsplit("/", 1)[0] + "/5"
    redis.Redis.from_url(broker).flushdb()
    env = worker_process_env(
        CELERY_BROKER_URL=broker,
        WEBHOOK_WORKER_CONCURRENCY="2",
        WEBHOOK_TIMEOUT_SECONDS="120",  # the stalled receiver holds its threads for the whole test
        CELERY_LOG_LEVEL="WARNING",
    )
    procfile = parse_procfile(ROOT / "Procfile")
    processes = []
    try:
        for name in ("worker", "worker-webhooks"):
            log = (tmp_path / f"{name}.log").open("wb")
            command = expand(procfile[name], env)
            processes.append(subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT))
        yield broker
    finally:
        for process in processes:
            stop_process(process, timeout=30)
        redis.Redis.from_url(broker).flushdb()


def test_a_stalled_webhook_receiver_does_not_delay_the_sweep(lane_workers, committed_personas: Personas):
    from datetime import timedelta

    from django.utils import timezone
    from django_tenants.utils import tenant_context

    from aiplatform.celery import app
    from apps.jobs.models import Job, JobStatus
    from tasks.jobs import jobs_requeue_stale_all
    from tasks.webhooks import webhook_send

    stalled = StalledReceiver()
    server = ThreadedUvicorn(stalled, name="stalled-receiver")
    server.start()
    try:
        client = committed_personas.alice.client()
        ask = {**CHAT, "model": "routing-probe"}  # no worker consumes llm.routing-probe: the jobs stay put
        hooked = [
            client.post("/api/v1/jobs", {**ask, "webhook": {"url": f"{server.url}/hook/{i}"}}, format="json").json()
            for i in range(5)
        ]
        stale = client.post("/api/v1/jobs", ask, format="json").json()
        acme = Tenant.objects.get(schema_name="acme")
        with tenant_context(acme), app.connection_for_write(lane_workers) as connection:
            Job.objects.filter(pk__in=[j["id"] for j in hooked]).update(status=JobStatus.SUCCEEDED)
            Job.objects.filter(pk=stale["id"]).update(enqueued_at=timezone.now() - timedelta(days=1))
            # More deliveries than the webhooks worker's two threads, and than the
            # housekeeping worker's four (were they on its queue, the sweep would wait).
            for job in hooked:
                webhook_send.apply_async(kwargs={"job_id": job["id"], "attempt": 1}, connection=connection)
        wait_for(lambda: stalled.waiting == 2, timeout=60)  # every webhook thread is held

        with app.connection_for_write(lane_workers) as connection:
            jobs_requeue_stale_all.apply_async(connection=connection)

        def requeued() -> bool:
            enqueued_at = Job.objects.get(pk=stale["id"]).enqueued_at
            return enqueued_at is not None and enqueued_at > timezone.now() - timedelta(hours=1)

        with tenant_context(acme):
            assert wait_for(requeued, timeout=60)
        assert stalled.waiting == 2  # the sweep ran while both webhook threads were still held
    finally:
        stalled.release.set()
        server.stop()


# --- The connection: TLS names the URL's host; one deadline for the exchange ----


class _TLSReceiver:
    """An HTTPS webhook receiver on 127.0.0.1 with a self-signed certificate for
    `name`; records the SNI and the Host header of what it gets."""

    def __init__(self, tmp_path: Any, name: str) -> None:
        import http.server
        import shutil
        import ssl
        import subprocess

        if not shutil.which("openssl"):
            pytest.skip("the openssl command is needed to make a test certificate")
        self.cert, key = tmp_path / f"{name}.pem", tmp_path / f"{name}.key"
        subject = ["-subj", f"/CN={name}", "-addext", f"subjectAltName=DNS:{name}"]
        files = ["-keyout", str(key), "-out", str(self.cert)]
        command = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", *subject, *files]
        subprocess.run(command, check=True, capture_output=True)
        self.sni: list[str | None] = []
        self.hosts: list[str] = []
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.hosts.append(self.headers.get("Host", ""))
                self.send_response(204)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert, key)
        context.sni_callback = lambda sock, server_name, ctx: self.sni.append(server_name)
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize("certificate_for", ["hooks.example", "someone-else.example"])
def test_https_connects_to_the_checked_address_and_verifies_the_urls_host(
    worker, committed_personas: Personas, settings, monkeypatch, tmp_path, certificate_for
):
    """hooks.example resolves (once) to 127.0.0.1, where the receiver is: the
    request goes to that address, with SNI and Host naming hooks.example, and
    the certificate is checked against that name (another name's fails)."""
    settings.WEBHOOK_MAX_ATTEMPTS = 1
    tls = _TLSReceiver(tmp_path, certificate_for)
    try:
        monkeypatch.setenv("SSL_CERT_FILE", str(tls.cert))  # trust the test certificate
        monkeypatch.setattr(webhooks, "resolver", lambda host, port: ["127.0.0.1"])
        url = f"https://hooks.example:{tls.port}/hook"
        client = committed_personas.alice.client()
        job = client.post("/api/v1/jobs", {**CHAT, "webhook": {"url": url}}, format="json").json()
        detail = _delivered(client, job["id"])
    finally:
        tls.stop()
    attempts = [(d["status_code"], d["error"]) for d in detail["webhook"]["deliveries"]]
    if certificate_for == "hooks.example":
        assert attempts == [(204, None)]
        assert tls.sni == ["hooks.example"] and tls.hosts == [f"hooks.example:{tls.port}"]
    else:
        assert attempts == [(None, "no_response")]  # the certificate does not name hooks.example
        assert tls.hosts == []


def test_a_receiver_that_trickles_its_answer_is_cut_at_the_deadline(worker, committed_personas: Personas, settings):
    """A byte of headers every 0.2 s never trips a per-read timeout; the
    delivery's one deadline (WEBHOOK_TIMEOUT_SECONDS) ends it anyway."""
    import socket

    settings.WEBHOOK_MAX_ATTEMPTS = 1
    settings.WEBHOOK_TIMEOUT_SECONDS = 1
    stop = threading.Event()
    listener = socket.create_server(("127.0.0.1", 0))
    served: list[int] = []

    def trickle() -> None:
        connection, _ = listener.accept()
        with connection:
            connection.recv(65536)
            connection.sendall(b"HTTP/1.1 200 OK\r\nX-Slow: ")
            while not stop.is_set():
                try:
                    connection.sendall(b"a")
                except OSError:
                    served.append(1)  # the client hung up
                    return
                stop.wait(0.2)

    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()
    try:
        client = committed_personas.alice.client()
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/hook"
        job = client.post("/api/v1/jobs", {**CHAT, "webhook": {"url": url}}, format="json").json()
        detail = _delivered(client, job["id"])
        assert [(d["status_code"], d["error"]) for d in detail["webhook"]["deliveries"]] == [(None, "no_response")]
        assert not stop.is_set()  # it was still trickling when the attempt gave up
    finally:
        stop.set()
        listener.close()
        thread.join(5)
