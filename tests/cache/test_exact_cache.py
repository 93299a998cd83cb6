"""The exact-match cache against the real worker, Valkey and upstream: a repeat
costs no provider call and answers at submission; tenants never share answers;
the per-request modes; TTL; single flight (N identical requests in flight, one
provider call); a failed leader lets its followers run on their own."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import openai
import pytest
import redis
from django.conf import settings
from django.test import Client
from django_tenants.utils import tenant_context

from apps.billing.models import LedgerEntry, LedgerKind
from apps.cache.exact import CachedAnswer, _script, cache_redis, exact_get, exact_put, index_key
from apps.cache.stats import stats_key
from apps.controls.models import CachePolicy
from apps.jobs.models import Job
from tests.support import Personas, http_client, job_until_final, metric_samples, metric_value, sse_events

DETERMINISTIC = {"model": "local-small", "messages": [{"role": "user", "content": "cache me"}], "temperature": 0}


def _calls(upstream: Any) -> int:
    return int(upstream.stats()["chat_per_model"].get("local-small", 0))


def _run(client: Any, body: dict[str, Any]) -> dict[str, Any]:
    response = client.post("/api/v1/jobs", body, format="json")
    assert response.status_code == 202, response.json()
    return job_until_final(client, response.json()["id"])


def test_a_deterministic_repeat_is_answered_at_submission_for_free(
    platform_server, worker, committed_personas: Personas, upstream
):
    alice = committed_personas.alice
    client = alice.client()
    # Tests in a rolled-back transaction (the `personas` fixture) may have counted
    # in Redis, which no rollback undoes: start from no counters.
    redis.Redis.from_url(settings.REDIS_URL).delete(stats_key("acme"))
    first = _run(client, DETERMINISTIC)
    assert first["status"] == "succeeded" and first["cached"] is None
    assert _calls(upstream) == 1

    second = client.post("/api/v1/jobs", DETERMINISTIC, format="json").json()
    assert second["status"] == "succeeded"  # in the POST's own answer: no worker involved
    assert second["cached"] == "exact"
    assert second["output"] == first["output"]
    assert second["usage"]["input_tokens"] == first["usage"]["input_tokens"]
    assert _calls(upstream) == 1
    with tenant_context(alice.tenant):
        entry = LedgerEntry.objects.get(job_id=second["id"])
        assert entry.kind == LedgerKind.CACHED and entry.cost_micros == 0 and entry.saved_micros > 0
    # Listeners get the answer as events, like any job's.
    with (
        http_client(platform_server, alice.key) as live,
        live.stream("GET", f"/api/v1/jobs/{second['id']}/events") as response,
    ):
        events = [event for _, event in sse_events(response)]
    assert [e["type"] for e in events] == ["delta", "usage", "done"]
    assert events[0]["text"] == first["output"]
    # Counted: the first request's miss, the second's hit (no double counting by the worker).
    day = redis.Redis.from_url(settings.REDIS_URL).hgetall(stats_key("acme"))
    assert day == {b"exact_miss": b"1", b"exact_hit": b"1"}


def test_sampled_requests_are_not_cached_unless_the_tenant_or_request_opts_in(
    worker, committed_personas: Personas, upstream
):
    client = committed_personas.alice.client()
    sampled = {**DETERMINISTIC, "temperature": 0.7}
    _run(client, sampled)
    assert _run(client, sampled)["cached"] is None
    assert _calls(upstream) == 2
    opted_in = {**sampled, "cache": {"mode": "use"}}
    _run(client, opted_in)
    assert client.post("/api/v1/jobs", opted_in, format="json").json()["cached"] == "exact"
    CachePolicy.objects.create(tenant=committed_personas.alice.tenant, cache_all_requests=True)
    other = {**sampled, "messages": [{"role": "user", "content": "the tenant caches everything"}]}
    _run(client, other)
    assert client.post("/api/v1/jobs", other, format="json").json()["cached"] == "exact"
    assert _calls(upstream) == 4


def test_tenants_never_share_an_answer(worker, committed_personas: Personas, upstream):
    alice, carol = committed_personas.alice, committed_personas.carol  # acme and globex
    assert alice.tenant != carol.tenant
    first = _run(alice.client(), DETERMINISTIC)
    other = _run(carol.client(), DETERMINISTIC)
    assert first["cached"] is None and other["cached"] is None
    assert _calls(upstream) == 2
    # Each tenant now hits its own entry, and only its own.
    assert alice.client().post("/api/v1/jobs", DETERMINISTIC, format="json").json()["cached"] == "exact"
    assert carol.client().post("/api/v1/jobs", DETERMINISTIC, format="json").json()["cached"] == "exact"
    keys = redis.Redis.from_url(settings.REDIS_URL, decode_responses=True).keys("aip:{*}:cache:exact:*")
    assert sorted(str(key).split(":")[1] for key in keys) == ["{acme}", "{globex}"]


def test_refresh_bypass_and_only(worker, committed_personas: Personas, upstream):
    client = committed_personas.alice.client()
    only = {**DETERMINISTIC, "cache": {"mode": "only"}}
    missed = client.post("/api/v1/jobs", only, format="json")
    assert missed.status_code == 404
    assert missed.json()["error"]["code"] == "cache_miss"
    with tenant_context(committed_personas.alice.tenant):
        assert not Job.objects.exists()  # nothing was queued
    assert _calls(upstream) == 0

    bypassed = _run(client, {**DETERMINISTIC, "cache": {"mode": "bypass"}})
    assert bypassed["cached"] is None
    assert client.post("/api/v1/jobs", only, format="json").status_code == 404  # bypass wrote nothing

    _run(client, DETERMINISTIC)  # writes
    hit = client.post("/api/v1/jobs", only, format="json")
    assert hit.status_code == 202 and hit.json()["cached"] == "exact"
    refreshed = _run(client, {**DETERMINISTIC, "cache": {"mode": "refresh"}})
    assert refreshed["cached"] is None  # called the model although an entry existed
    assert _calls(upstream) == 3


def test_an_entry_expires_after_its_ttl(worker, committed_personas: Personas, upstream):
    client = committed_personas.alice.client()
    short = {**DETERMINISTIC, "cache": {"mode": "use", "ttl": 1}}
    _run(client, short)
    assert client.post("/api/v1/jobs", short, format="json").json()["cached"] == "exact"
    time.sleep(1.2)
    assert _run(client, short)["cached"] is None
    assert _calls(upstream) == 2
    # The tenant's default TTL applies when the request sets none.
    CachePolicy.objects.create(tenant=committed_personas.alice.tenant, exact_ttl_seconds=1)
    fresh = {**DETERMINISTIC, "messages": [{"role": "user", "content": "expire by policy"}]}
    _run(client, fresh)
    time.sleep(1.2)
    assert _run(client, fresh)["cached"] is None


def test_twenty_identical_requests_in_flight_make_one_provider_call(
    platform_server, worker, committed_personas: Personas, upstream
):
    upstream.configure(latency_ms=1500)  # the leader is in flight while the others arrive
    alice = committed_personas.alice

    def submit(_: int) -> str:
        with http_client(platform_server, alice.key) as client:
            response = client.post("/api/v1/jobs", json=DETERMINISTIC)
            assert response.status_code == 202, response.text
            return str(response.json()["id"])

    with ThreadPoolExecutor(20) as pool:
        ids = list(pool.map(submit, range(20)))
    with http_client(platform_server, alice.key) as client:
        jobs = [job_until_final(client, job_id) for job_id in ids]
    assert {job["status"] for job in jobs} == {"succeeded"}
    assert len({job["output"] for job in jobs}) == 1
    assert _calls(upstream) == 1
    assert sorted(job["cached"] or "" for job in jobs) == [""] + ["exact"] * 19
    with tenant_context(alice.tenant):
        kinds = sorted(LedgerEntry.objects.values_list("kind", flat=True))
    assert kinds == [LedgerKind.CACHED] * 19 + [LedgerKind.CHARGE]


def test_followers_of_a_failed_leader_run_on_their_own(worker, committed_personas: Personas, upstream):
    upstream.configure(latency_ms=800)
    upstream.add_faults({"model": "local-small", "status": 500, "message": "leader exploded"})
    client = committed_personas.alice.client()
    ids = [client.post("/api/v1/jobs", DETERMINISTIC, format="json").json()["id"] for _ in range(3)]
    jobs = [job_until_final(client, job_id) for job_id in ids]
    assert [job["status"] for job in jobs] == ["failed", "succeeded", "succeeded"]
    # The followers ran after the leader failed; the first of them wrote the entry,
    # the other found it (or ran too): never more calls than jobs.
    assert 2 <= _calls(upstream) <= 3


def test_v1_clients_pass_the_cache_option_in_the_body(platform_server, worker, committed_personas: Personas, upstream):
    sdk = openai.OpenAI(
        base_url=f"{platform_server.url}/v1", api_key=committed_personas.alice.key, max_retries=0, timeout=20
    )
    messages: Any = DETERMINISTIC["messages"]
    first = sdk.chat.completions.create(model="local-small", messages=messages, temperature=0)
    again = sdk.chat.completions.with_raw_response.create(model="local-small", messages=messages, temperature=0)
    assert again.parse().choices[0].message.content == first.choices[0].message.content
    assert _calls(upstream) == 1
    with http_client(platform_server, committed_personas.alice.key) as client:
        assert client.get(f"/api/v1/jobs/{again.headers['x-aip-job-id']}").json()["cached"] == "exact"
    try:
        sdk.chat.completions.create(
            model="local-small",
            messages=[{"role": "user", "content": "never asked"}],
            extra_body={"cache": {"mode": "only"}},
        )
    except openai.NotFoundError as exc:
        assert exc.code == "cache_miss"
    else:
        raise AssertionError("cache.mode only must not call a model")
    assert _calls(upstream) == 1


def test_cancelling_a_queued_leader_releases_its_followers(committed_personas: Personas):
    client = committed_personas.alice.client()
    broker = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    broker.delete("llm.routing-probe")
    body = {**DETERMINISTIC, "model": "routing-probe"}  # no worker serves it: the jobs stay queued
    ids = [client.post("/api/v1/jobs", body, format="json").json()["id"] for _ in range(3)]
    assert broker.llen("llm.routing-probe") == 1  # the leader only; two followers wait for it
    assert client.post(f"/api/v1/jobs/{ids[0]}/cancel").status_code == 200
    assert broker.llen("llm.routing-probe") == 3  # the followers now run on their own
    broker.delete("llm.routing-probe")


def test_cancelling_a_follower_leaves_the_others_following(committed_personas: Personas):
    client = committed_personas.alice.client()
    broker = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    broker.delete("llm.routing-probe")
    body = {**DETERMINISTIC, "model": "routing-probe"}  # no worker serves it: the jobs stay queued
    ids = [client.post("/api/v1/jobs", body, format="json").json()["id"] for _ in range(3)]
    assert broker.llen("llm.routing-probe") == 1
    # One follower cancelled: it alone leaves the flight; nobody is enqueued.
    assert client.post(f"/api/v1/jobs/{ids[1]}/cancel").status_code == 200
    assert broker.llen("llm.routing-probe") == 1
    with tenant_context(committed_personas.alice.tenant):
        assert Job.objects.get(pk=ids[2]).status == "queued"
    # The leader's end lands the flight: only the remaining follower runs on its own.
    assert client.post(f"/api/v1/jobs/{ids[0]}/cancel").status_code == 200
    assert broker.llen("llm.routing-probe") == 2
    broker.delete("llm.routing-probe")


def test_entries_are_capped_per_tenant(worker, committed_personas: Personas, upstream):
    alice, carol = committed_personas.alice, committed_personas.carol
    CachePolicy.objects.create(tenant=alice.tenant, exact_max_entries=2)
    client = alice.client()
    for n in range(4):
        _run(client, {**DETERMINISTIC, "messages": [{"role": "user", "content": f"capped {n}"}]})
    _run(carol.client(), DETERMINISTIC)  # another tenant's entries are its own count
    store = redis.Redis.from_url(settings.CACHE_REDIS_URL)
    assert store.zcard(index_key("acme")) == 2
    assert len(list(store.scan_iter(match="aip:{acme}:cache:exact:*"))) == 2
    assert len(list(store.scan_iter(match="aip:{globex}:cache:exact:*"))) == 1


def test_over_the_cap_the_entries_that_expire_soonest_go(committed_personas: Personas):
    answer = CachedAnswer("x", "stop", 1, 1, False, "m", "2026-01-01T00:00:00+00:00")
    for name, ttl in (("a" * 64, 100), ("b" * 64, 300), ("c" * 64, 200)):
        exact_put(schema="acme", key=name, answer=answer, ttl=ttl, max_entries=2)
    assert exact_get(schema="acme", key="a" * 64, count=False) is None
    assert exact_get(schema="acme", key="b" * 64, count=False) is not None
    assert exact_get(schema="acme", key="c" * 64, count=False) is not None


def test_metrics_report_the_main_valkeys_memory_and_warn_near_its_limit(committed_personas: Personas, settings, caplog):
    # The embedded Valkey runs noeviction under a maxmemory (devtools/embedded.py).
    info = redis.Redis.from_url(settings.REDIS_URL).config_get("maxmemory*")
    assert info["maxmemory-policy"] == "noeviction" and int(str(info["maxmemory"])) > 0
    settings.REDIS_MEMORY_WARN_RATIO = 0.0  # any use is "near the limit" for this scrape
    with caplog.at_level(logging.WARNING, logger="aiplatform.metrics"):
        page = Client().get("/metrics")
    assert page.status_code == 200
    ratio = metric_value(metric_samples(page.content.decode()), "aip_redis_memory_used_ratio", role="main")
    assert 0 < ratio < 1
    assert any(getattr(r, "event", "") == "redis_memory_high" for r in caplog.records)


@pytest.fixture
def cache_role_apart(settings) -> Iterator[redis.Redis]:
    """CACHE_REDIS_URL names another Valkey database than REDIS_URL: the cache's own role."""
    main = settings.REDIS_URL
    settings.CACHE_REDIS_URL = main.rsplit("/", 1)[0] + "/1"
    cache_redis.cache_clear()
    _script.cache_clear()
    store = redis.Redis.from_url(settings.CACHE_REDIS_URL)
    yield store
    store.flushdb()
    settings.CACHE_REDIS_URL = main
    cache_redis.cache_clear()
    _script.cache_clear()


def test_entries_live_in_the_cache_role_and_counters_in_the_main_one(
    committed_personas: Personas, cache_role_apart: redis.Redis
):
    answer = CachedAnswer("x", "stop", 1, 1, False, "m", "2026-01-01T00:00:00+00:00")
    exact_put(schema="acme", key="d" * 64, answer=answer, ttl=60, max_entries=10)
    main = redis.Redis.from_url(settings.REDIS_URL)
    assert cache_role_apart.exists(f"aip:{{acme}}:cache:exact:{'d' * 64}", index_key("acme")) == 2
    assert not main.exists(f"aip:{{acme}}:cache:exact:{'d' * 64}")
    assert exact_get(schema="acme", key="d" * 64) == answer
    assert main.hget(stats_key("acme"), "exact_hit") == b"1"  # never evicted with the entries
    page = metric_samples(Client().get("/metrics").content.decode())
    assert metric_value(page, "aip_redis_memory_used_bytes", role="cache") > 0
