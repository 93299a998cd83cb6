"""`GET /metrics` on the operator's host: two kinds of series.

- The web processes' own (apps/observability/metrics.py): admissions, rejections,
  cache lookups at submission; with PROMETHEUS_MULTIPROC_DIR, every process of
  the group merged. Workers serve theirs on WORKER_METRICS_PORT.
- What is already shared in Redis, so any one web process answers for the whole
  platform: each model's circuit breaker, each Celery queue's depth, and each
  tenant's cache hits, misses, single-flight followers and semantic lookup time.

Who may read it (it names every tenant): with METRICS_TOKEN set, whoever sends
`Authorization: Bearer <token>` (scrape configs support it), on any host but a
tenant's; without it, loopback clients on PUBLIC_DOMAIN only (a reverse proxy on
the same host must send X-Forwarded-For, which uvicorn trusts from loopback, or
every client would look local: set a token there).
"""

from __future__ import annotations

import functools
import hmac
import ipaddress
import logging
from collections.abc import Iterator

import redis
from django.conf import settings
from django.core.exceptions import DisallowedHost
from django.http import HttpRequest, HttpResponse
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from apps.cache.stats import FIELDS, cache_totals
from apps.catalog.selectors import catalog_snapshot
from apps.core.views import not_found
from apps.llm.breaker import breaker_state
from apps.observability.metrics import registry as process_registry
from apps.tenants.models import Tenant
from tasks.queues import CeleryQueue, llm_queue

logger = logging.getLogger(__name__)

# kombu's Redis transport keeps a queue's messages of priority p > 0 in `<queue>\x06\x16<p>`.
_PRIORITY_SUFFIXES = ("", "\x06\x163", "\x06\x166", "\x06\x169")


@functools.lru_cache(maxsize=1)
def _broker() -> redis.Redis | None:
    url = settings.CELERY_BROKER_URL
    if not url.startswith(("redis://", "rediss://", "unix://")):
        return None  # another broker: its own exporter reports its queues
    return redis.Redis.from_url(url, socket_timeout=2)


BREAKER_STATES = {"closed": 0, "open": 1, "half-open": 2}


class SharedStateCollector(Collector):
    def collect(self) -> Iterator[Metric]:
        state = GaugeMetricFamily(
            "aip_circuit_breaker_state", "Circuit breaker per model: 0 closed, 1 open, 2 half-open.", labels=["model"]
        )
        failures = GaugeMetricFamily(
            "aip_circuit_breaker_failures", "Failures counted in the breaker's current window.", labels=["model"]
        )
        slugs = sorted(catalog_snapshot())
        for slug in slugs:
            current = breaker_state(slug)
            state.add_metric([slug], BREAKER_STATES[current.state])
            failures.add_metric([slug], current.failures)
        yield state
        yield failures

        broker = _broker()
        if broker is not None:
            depth = GaugeMetricFamily(
                "aip_queue_depth", "Messages waiting in each Celery queue (not yet taken).", labels=["queue"]
            )
            queues = [*(q.value for q in CeleryQueue), *(llm_queue(slug) for slug in slugs)]
            pipe = broker.pipeline(transaction=False)
            for name in queues:
                for suffix in _PRIORITY_SUFFIXES:
                    pipe.llen(name + suffix)
            lengths = pipe.execute()
            step = len(_PRIORITY_SUFFIXES)
            for index, name in enumerate(queues):
                depth.add_metric([name], sum(lengths[index * step : (index + 1) * step]))
            yield depth

        events = CounterMetricFamily(
            "aip_cache_events", "Cache lookups by tenant, kind and outcome.", labels=["tenant", "kind", "outcome"]
        )
        lookup = CounterMetricFamily(
            "aip_semantic_lookup_seconds", "Time spent in semantic-cache lookups (sum).", labels=["tenant"]
        )
        for schema in Tenant.objects.exclude(schema_name="public").values_list("schema_name", flat=True):
            totals = cache_totals(schema=schema)
            for field in FIELDS:
                kind, _, outcome = field.partition("_")
                events.add_metric([schema, kind, outcome], totals.get(field, 0.0))
            lookup.add_metric([schema], totals.get("semantic_lookup_ms_total", 0.0) / 1000)
        yield events
        yield lookup


class RedisMemoryCollector(Collector):
    """Each Valkey role's memory use against its `maxmemory`, read at scrape time
    (INFO memory). The main one runs `noeviction`: at its limit writes fail (the
    broker, budgets, limits), so crossing REDIS_MEMORY_WARN_RATIO is logged here
    and alerted on (docker/prometheus/alerts.yml). A server without a limit
    reports no ratio."""

    def collect(self) -> Iterator[Metric]:
        from apps.cache.exact import cache_redis
        from apps.core.redis import redis_client

        ratio = GaugeMetricFamily(
            "aip_redis_memory_used_ratio", "Valkey used_memory / maxmemory, per role.", labels=["role"]
        )
        used = GaugeMetricFamily("aip_redis_memory_used_bytes", "Valkey used_memory, per role.", labels=["role"])
        roles = [("main", redis_client())]
        if settings.CACHE_REDIS_URL != settings.REDIS_URL:
            roles.append(("cache", cache_redis()))
        for role, client in roles:
            try:
                info = client.info("memory")
            except redis.RedisError as exc:  # one role down must not hide the others' series
                logger.warning("Valkey (%s) memory unreadable for /metrics: %s", role, exc)
                continue
            used_bytes, limit = int(info.get("used_memory", 0)), int(info.get("maxmemory", 0))
            used.add_metric([role], used_bytes)
            if limit <= 0:
                continue
            share = used_bytes / limit
            ratio.add_metric([role], share)
            if role == "main" and share >= settings.REDIS_MEMORY_WARN_RATIO:
                logger.warning(
                    "the main Valkey uses %.0f%% of its maxmemory (%d of %d bytes): at 100%% it refuses writes",
                    share * 100,
                    used_bytes,
                    limit,
                    extra={"event": "redis_memory_high"},
                )
        yield ratio
        yield used


def _loopback_client(request: HttpRequest) -> bool:
    try:
        return ipaddress.ip_address(request.META.get("REMOTE_ADDR", "")).is_loopback
    except ValueError:
        return False


def _public_host(request: HttpRequest) -> bool:
    try:
        return request.get_host().rsplit(":", 1)[0].lower() == settings.PUBLIC_DOMAIN.lower()
    except DisallowedHost:
        return False


@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    token = settings.METRICS_TOKEN
    if token:
        sent = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if not hmac.compare_digest(sent.encode(), token.encode()):
            return HttpResponse("metrics need the bearer token\n", status=401, content_type="text/plain")
    elif not _public_host(request):
        return not_found(request)  # no token: nothing here but on the operator's host
    elif not _loopback_client(request):
        return HttpResponse(
            "metrics answer loopback clients only (or set METRICS_TOKEN)\n", status=403, content_type="text/plain"
        )
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SharedStateCollector())
    registry.register(RedisMemoryCollector())
    try:
        shared = generate_latest(registry)
    except redis.RedisError as exc:
        return HttpResponse(f"redis unavailable: {exc}\n", status=503, content_type="text/plain")
    return HttpResponse(generate_latest(process_registry()) + shared, content_type=CONTENT_TYPE_LATEST)
