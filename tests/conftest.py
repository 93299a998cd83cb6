"""Test fixtures: real Postgres (embedded, with pgvector), real Valkey, a real
OpenAI-compatible upstream over HTTP, and a real Celery worker where a test needs one.

Tenants `acme` and `globex` are created once per session (creating a schema runs
every tenant migration). Personas, per the style guide:
- alice: acme, standard tier      - bob: acme, standard tier (alice's colleague)
- carol: globex, premium tier (an outsider to acme)
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
import redis
from django.conf import settings
from django.db import OperationalError
from django.db import connection as _connection
from django_tenants.utils import tenant_context
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from apps.accounts.models import Tier
from apps.accounts.selectors import principal_cache_clear
from apps.accounts.services import api_key_create, user_get_or_create
from apps.catalog.models import LLMModel
from apps.catalog.selectors import catalog_cache_clear
from apps.observability.tracing import tracing_init
from apps.tenants.db import tenant_connection
from apps.tenants.models import Tenant
from apps.tenants.selectors import tenant_route_cache_clear
from apps.tenants.services import tenant_create
from devtools.serve import ThreadedUvicorn
from devtools.upstream import UpstreamServer
from tests.support import Persona, Personas, Receiver

# Tracing is on for the whole suite, so every test runs the instrumented paths; spans
# go to memory (exported as each ends), where tests/observability reads them.
SPANS = InMemorySpanExporter()
tracing_init(service="aiplatform-test", exporter=SPANS, batch=False)

TEST_MODELS = ("local-small", "premium-large", "routing-probe", "pool-probe")
TENANT_TABLES = (
    "flags_flagchange",
    "flags_flag",
    "answer_cache_semanticentry",
    "ratelimit_userratelimit",
    "billing_ledgerentry",
    "billing_userbudget",
    "jobs_job",
    "accounts_apikey",
    "accounts_user",
)
PUBLIC_TABLES = (
    "tenants_apikeyroute",
    "controls_tenantbudget",
    "controls_tierbudget",
    "controls_spendrollup",
    "controls_killswitchevent",
    "controls_killswitch",
    "controls_ratelimit",
    "controls_cachepolicy",
    "controls_fallbackpolicy",
    "flags_flagchange",
    "flags_flag",
)


@pytest.fixture(scope="session")
def django_db_modify_db_settings(django_db_modify_db_settings_parallel_suffix: None) -> None:
    """Django's connection pool keeps the conninfo it was opened with; a pool opened
    before pytest-django renames the database to `test_...` would keep serving the
    original database. Close it so the first use after the rename opens a new one."""
    from django.db import connections

    for conn in connections.all():
        conn.close()
        conn.close_pool()  # type: ignore[attr-defined]


@pytest.fixture(scope="session")
def django_db_setup(
    django_test_environment: None, django_db_blocker: Any, django_db_modify_db_settings: None
) -> Iterator[None]:
    """Create the test database whichever tests are collected. pytest-django's own
    version only does so when a collected test carries the django_db mark, and the
    worker tests use committed_db instead."""
    from django.test.utils import setup_databases, teardown_databases

    with django_db_blocker.unblock():
        config = setup_databases(
            verbosity=0, interactive=False, aliases={"default": {"NAME"}}, serialized_aliases=set()
        )
    yield
    with django_db_blocker.unblock():
        # Threads of this session (the live server's web pool, the in-process
        # worker) may still hold pooled connections: end them, or the test database
        # cannot be dropped.
        from django.db import connection

        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        connection.close()
        teardown_databases(config, verbosity=0)


@pytest.fixture(scope="session")
def upstream() -> Iterator[UpstreamServer]:
    server = UpstreamServer(models=list(TEST_MODELS))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def local_model(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The bundled local model (SmolLM2-135M-Instruct on llama.cpp's server, as
    `make run` starts it) on a free port: its base_url. Loading takes about a second."""
    from devtools import local_model as bundled

    log = tmp_path_factory.mktemp("local-model") / "server.log"
    with bundled.running(log=log) as base_url:
        yield base_url


@pytest.fixture(autouse=True)
def _fresh_upstream_and_caches(request: pytest.FixtureRequest) -> Iterator[None]:
    SPANS.clear()
    catalog_cache_clear()
    principal_cache_clear()
    tenant_route_cache_clear()
    if "upstream" in request.fixturenames:
        request.getfixturevalue("upstream").reset()
    # A request leaves the connection on its tenant's schema; start each test on public.
    tenant_connection().set_schema_to_public()
    yield


@pytest.fixture(scope="session")
def platform(django_db_setup: None, django_db_blocker: Any, upstream: UpstreamServer) -> dict[str, Tenant]:
    """Committed once per session: the test tenants and the catalog."""
    with django_db_blocker.unblock():
        tenants = {
            schema: tenant_create(schema_name=schema, name=schema.title(), domain=f"{schema}.testserver")
            for schema in ("acme", "globex")
        }
        for slug, context_window, max_output in (
            ("local-small", 4096, 1024),
            ("premium-large", 128000, 4096),
            ("routing-probe", 4096, 1024),
            ("pool-probe", 4096, 1024),  # served only by the gevent worker process (test_gevent_worker)
        ):
            LLMModel.objects.create(
                slug=slug,
                base_url=upstream.base_url,
                context_window=context_window,
                max_output_tokens=max_output,
                input_price_per_mtok=Decimal("0.150000"),
                output_price_per_mtok=Decimal("0.600000"),
            )
        tenant_connection().set_schema_to_public()
    return tenants


def _make_persona(tenants: dict[str, Tenant], name: str, schema: str, tier: str) -> Persona:
    tenant = tenants[schema]
    with tenant_context(tenant):
        user, _ = user_get_or_create(email=f"{name}@{schema}.test", tier=tier)
        _, raw = api_key_create(user=user, name=name)
    tenant_connection().set_schema_to_public()
    return Persona(name=name, email=user.email, tenant=tenant, key=raw, user_id=user.pk)


def _personas(tenants: dict[str, Tenant]) -> Personas:
    return Personas(
        alice=_make_persona(tenants, "alice", "acme", Tier.STANDARD),
        bob=_make_persona(tenants, "bob", "acme", Tier.STANDARD),
        carol=_make_persona(tenants, "carol", "globex", Tier.PREMIUM),
    )


@pytest.fixture
def personas(platform: dict[str, Tenant], db: None) -> Personas:
    """Personas inside the test's transaction (rolled back after the test)."""
    return _personas(platform)


@pytest.fixture
def committed_db(platform: dict[str, Tenant], django_db_blocker: Any) -> Iterator[None]:
    """Database access without a wrapping transaction, for tests whose rows a
    Celery worker (another thread, another connection) must see. Cleans the test
    tenants' tables afterwards; the session's tenants and catalog stay."""
    with django_db_blocker.unblock():
        yield
        tables = [f"{t.schema_name}.{name}" for t in platform.values() for name in TENANT_TABLES]
        tables += [f"public.{name}" for name in PUBLIC_TABLES]
        tenant_connection().set_schema_to_public()
        # One statement for all of them. The in-process worker may still be finishing
        # a task of the test (a webhook delivery, an alert): a deadlock with it is
        # retried, not a failure.
        for attempt in range(10):
            try:
                with _connection.cursor() as cursor:
                    cursor.execute(f"TRUNCATE {', '.join(tables)} CASCADE")
                break
            except OperationalError:
                if attempt == 9:
                    raise
                time.sleep(0.2)
        # Budget counters, reservations, alert marks, buckets, cached answers, breakers,
        # stream slots, cancel flags and settlement marks:
        # every test starts with none.
        client = redis.Redis.from_url(settings.REDIS_URL)
        patterns = (
            "aip:{*}:budget:*",
            "aip:{*}:resv:*",
            "aip:{*}:alert:*",
            "aip:{*}:rl:*",
            "aip:rl:*",
            "aip:{*}:cache:*",
            "aip:cb:*",
            "aip:{*}:streams:*",
            "aip:{*}:cancel:*",
            "aip:{*}:settled:*",
            "aip:{*}:rlsettled:*",
        )
        for pattern in patterns:
            for key in client.scan_iter(match=pattern, count=1000):
                client.delete(key)
        client.incr("aip:flags:version")  # the flags were truncated: every process reloads them


@pytest.fixture
def committed_personas(committed_db: None, platform: dict[str, Tenant]) -> Personas:
    return _personas(platform)


@pytest.fixture(scope="session")
def platform_server(platform: dict[str, Tenant]) -> Iterator[ThreadedUvicorn]:
    """The platform's real ASGI app under uvicorn, on a free loopback port."""
    from aiplatform.asgi import application

    server = ThreadedUvicorn(application, name="platform")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def celery_worker_thread(platform: dict[str, Tenant], django_db_blocker: Any) -> Iterator[Any]:
    """A real Celery worker (thread pool, as in production) consuming the real
    queues on the test Valkey, in a thread of this process."""
    from celery.contrib.testing.worker import start_worker

    from aiplatform.celery import app

    queues = ["default", "webhooks", "llm.local-small", "llm.premium-large"]
    with (
        django_db_blocker.unblock(),
        start_worker(
            app,
            pool="threads",
            concurrency=4,
            perform_ping_check=False,
            loglevel="WARNING",
            queues=queues,
            shutdown_timeout=30,
        ) as worker,
    ):
        yield worker


@pytest.fixture
def worker(celery_worker_thread: Any, committed_db: None) -> Any:
    return celery_worker_thread


@pytest.fixture
def receiver():
    app = Receiver()
    server = ThreadedUvicorn(app, name="webhook-receiver")
    server.start()
    app.url = f"{server.url}/hooks/jobs"
    yield app
    server.stop()
