"""The Prometheus metrics each process records, and how a process serves them.

Counters and histograms live in the process that saw the event (web: admission,
rejections, cache hits at submission; worker: provider calls, cost, jobs). In a
process group that shares one `PROMETHEUS_MULTIPROC_DIR` (uvicorn --workers N),
prometheus_client writes them to memory-mapped files there and `registry()`
merges every process's files: any web process answers for all of them. Each
Celery worker (one process: threads or gevent) serves its own on an internal
port (`WORKER_METRICS_PORT`). What is already shared in Redis (breakers, queue
depth, per-tenant cache counters) is read at scrape time by the web's /metrics
only (`aiplatform/metrics.py`), so no series is counted twice.

GenAI metric names and buckets follow the OpenTelemetry GenAI conventions
(`gen_ai.client.token.usage`, `gen_ai.client.operation.duration`,
`gen_ai.client.operation.time_to_first_chunk`), with dots as underscores.
`METRICS_ENABLED=false` turns recording off (the benchmark's "off").

Money is recorded in US dollars as Prometheus floats, converted from the
ledger's integer micro-dollars at the edge: the ledger stays the truth.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.multiprocess import MultiProcessCollector

# No `*_created` series next to every counter (multiprocess mode has none either).
disable_created_metrics()

ENABLED = os.environ.get("METRICS_ENABLED", "true").strip().lower() not in ("0", "false", "no", "off")

# The GenAI conventions' advisory buckets.
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304)
DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)
FIRST_CHUNK_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)

_GENAI = ["gen_ai_operation_name", "gen_ai_provider_name", "gen_ai_request_model", "model"]

TOKEN_USAGE = Histogram(
    "gen_ai_client_token_usage",
    "Tokens per provider call, by type (input, output) and model.",
    [*_GENAI, "gen_ai_token_type"],
    buckets=TOKEN_BUCKETS,
)
OPERATION_DURATION = Histogram(
    "gen_ai_client_operation_duration_seconds",
    "Provider call duration, by model and outcome (ok or our error type).",
    [*_GENAI, "outcome"],
    buckets=DURATION_BUCKETS,
)
TIME_TO_FIRST_CHUNK = Histogram(
    "gen_ai_client_operation_time_to_first_chunk_seconds",
    "From sending a streamed provider request to its first chunk of text.",
    _GENAI,
    buckets=FIRST_CHUNK_BUCKETS,
)
COST = Counter("aip_cost_usd", "What tenants were charged, in USD, by tenant and model.", ["tenant", "model"])
JOBS = Counter("aip_jobs", "Jobs entering a status (queued, succeeded, failed, cancelled).", ["status"])
CACHE_REQUESTS = Counter(
    "aip_cache_requests", "Answer-cache lookups, by kind (exact, semantic) and result (hit, miss).", ["kind", "result"]
)
FALLBACKS = Counter(
    "aip_fallbacks", "A job moving down its fallback chain, by the step it left and why.", ["from", "to", "reason"]
)
RATELIMIT_REJECTIONS = Counter(
    "aip_ratelimit_rejections",
    "Requests refused by a rate limit, by bucket (user, tenant or model; tokens or requests) and tenant.",
    ["bucket", "tenant"],
)
RATELIMIT_UNAVAILABLE = Counter(
    "aip_ratelimit_unavailable",
    "Admissions made while the limiter's Redis was unreachable, by outcome (fail_open, fail_closed).",
    ["outcome"],
)
BUDGET_REJECTIONS = Counter(
    "aip_budget_rejections",
    "Requests refused because a budget would be exceeded, by scope (user, tenant), period and tenant.",
    ["scope", "period", "tenant"],
)
JOBS_IN_FLIGHT = Gauge(
    "aip_jobs_in_flight",
    "Jobs this worker is running now, by model.",
    ["model"],
    multiprocess_mode="livesum",
)
TAKEOVERS = Counter(
    "aip_job_takeovers",
    "Jobs re-sent because their worker stopped renewing their lease (worker_lost), or had"
    " to give them back (handback), or because Redis lost its queues (broker_lost).",
    ["reason"],
)
RESTARTS = Counter("aip_job_restarts", "Jobs started over by a new attempt after their worker was lost.", ["model"])
RECOVERY = Histogram(
    "aip_job_recovery_seconds",
    "From a lost attempt's last lease renewal to the new attempt's claim.",
    buckets=(1, 2, 5, 10, 15, 20, 30, 45, 60, 120, 300, 600),
)
HEARTBEAT_AGE = Gauge(
    "aip_job_heartbeat_age_seconds",
    "Seconds since this worker last renewed the leases of the jobs it runs (0 when idle).",
    multiprocess_mode="max",
)


def usd(micros: int) -> float:
    return micros / 1_000_000


def registry() -> CollectorRegistry:
    """This process's metrics, or every process's in PROMETHEUS_MULTIPROC_DIR."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not directory:
        return REGISTRY
    merged = CollectorRegistry()
    MultiProcessCollector(merged, path=directory)
    return merged


# --- Recording (no-ops when METRICS_ENABLED=false) ---------------------------


def record_job_status(status: str) -> None:
    if ENABLED:
        JOBS.labels(status).inc()


def record_cache_request(kind: str, *, hit: bool) -> None:
    if ENABLED:
        CACHE_REQUESTS.labels(kind, "hit" if hit else "miss").inc()


def record_fallback(source: str, target: str, reason: str) -> None:
    if ENABLED:
        FALLBACKS.labels(source, target, reason).inc()


def record_ratelimit_rejection(bucket: str, tenant: str) -> None:
    if ENABLED:
        RATELIMIT_REJECTIONS.labels(bucket, tenant).inc()


def record_ratelimit_unavailable(outcome: str) -> None:
    if ENABLED:
        RATELIMIT_UNAVAILABLE.labels(outcome).inc()


def record_budget_rejection(scope: str, period: str, tenant: str) -> None:
    if ENABLED:
        BUDGET_REJECTIONS.labels(scope, period, tenant).inc()


def record_cost(tenant: str, model: str, micros: int) -> None:
    if ENABLED and micros > 0:
        COST.labels(tenant, model).inc(usd(micros))


def jobs_in_flight(model: str) -> Gauge:
    """`with jobs_in_flight(model).track_inprogress():` around a job's run."""
    return JOBS_IN_FLIGHT.labels(model)


def record_takeover(reason: str, count: int = 1) -> None:
    if ENABLED and count:
        TAKEOVERS.labels(reason).inc(count)


def record_restart(model: str, *, recovery_seconds: float | None) -> None:
    if ENABLED:
        RESTARTS.labels(model).inc()
        if recovery_seconds is not None:
            RECOVERY.observe(max(recovery_seconds, 0.0))


def heartbeat_age_gauge(age: Callable[[], float]) -> None:
    """The heartbeat's age, read at scrape time (a worker serves its own registry)."""
    if ENABLED and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        HEARTBEAT_AGE.set_function(age)
