"""`GET /metrics`: Prometheus metrics whose truth is already shared in Redis, so
any one web process answers for the whole platform (no per-process counters to
merge): each model's circuit breaker, and each tenant's cache hits, misses,
single-flight followers and semantic lookup time.

Set METRICS_TOKEN to require `Authorization: Bearer <token>` (scrape configs
support it); unset, the endpoint is open (keep it on an internal network).
"""

from __future__ import annotations

import hmac
from collections.abc import Iterator

import redis
from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from apps.cache.stats import FIELDS, cache_totals
from apps.catalog.selectors import catalog_snapshot
from apps.llm.breaker import breaker_state
from apps.tenants.models import Tenant

BREAKER_STATES = {"closed": 0, "open": 1, "half-open": 2}


class SharedStateCollector(Collector):
    def collect(self) -> Iterator[Metric]:
        state = GaugeMetricFamily(
            "aip_circuit_breaker_state", "Circuit breaker per model: 0 closed, 1 open, 2 half-open.", labels=["model"]
        )
        failures = GaugeMetricFamily(
            "aip_circuit_breaker_failures", "Failures counted in the breaker's current window.", labels=["model"]
        )
        for slug in sorted(catalog_snapshot()):
            current = breaker_state(slug)
            state.add_metric([slug], BREAKER_STATES[current.state])
            failures.add_metric([slug], current.failures)
        yield state
        yield failures

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


@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    token = settings.METRICS_TOKEN
    if token:
        sent = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if not hmac.compare_digest(sent.encode(), token.encode()):
            return HttpResponse("metrics need the bearer token\n", status=401, content_type="text/plain")
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SharedStateCollector())
    try:
        body = generate_latest(registry)
    except redis.RedisError as exc:
        return HttpResponse(f"redis unavailable: {exc}\n", status=503, content_type="text/plain")
    return HttpResponse(body, content_type=CONTENT_TYPE_LATEST)
