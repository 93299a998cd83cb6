"""Settings shared by every environment. Deploy-specific values come from the environment."""

from __future__ import annotations

from pathlib import Path

import django_stubs_ext
from celery.schedules import crontab
from django.core.exceptions import ImproperlyConfigured

from apps.observability.logs import logging_config
from apps.observability.sentry import init_sentry

from .env import database_from_url, env_bool, env_float, env_int, env_list, env_str, env_url

# Lets admin and serializer classes be subscripted for type checking (Admin[Model]).
django_stubs_ext.monkeypatch()

BASE_DIR = Path(__file__).resolve().parent.parent.parent

SECRET_KEY = env_str("SECRET_KEY")
DEBUG = env_bool("DEBUG", False)
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", [])
# HMAC pepper for API key hashes. Kept apart from SECRET_KEY so rotating the
# session secret does not invalidate every API key.
API_KEY_PEPPER = env_str("API_KEY_PEPPER")

# --- Apps: django-tenants splits them into the public schema and each tenant's schema.
SHARED_APPS = [
    # Before django_tenants: Django gives a command name to the first app that has
    # it, and django_tenants ships a `create_tenant` of its own that would shadow
    # ours (the README's `manage.py create_tenant --schema ... --domain ...`).
    "apps.tenants",
    "django_tenants",
    "apps.catalog",
    "apps.controls",
    "apps.flags",
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django.contrib.admin",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
]
TENANT_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django.contrib.admin",
    "django.contrib.sessions",
    "django.contrib.messages",
    "apps.accounts",
    "apps.jobs",
    "apps.billing",
    "apps.ratelimit",
    "apps.cache",
    "apps.flags",
]
INSTALLED_APPS = SHARED_APPS + [app for app in TENANT_APPS if app not in SHARED_APPS]

TENANT_MODEL = "tenants.Tenant"
TENANT_DOMAIN_MODEL = "tenants.Domain"
# The API resolves its tenant from the key, not the Host, so an unknown host
# (127.0.0.1, a load balancer's name) is served by the public URLconf.
SHOW_PUBLIC_IF_NO_TENANT_FOUND = True
# Issue `SET search_path` once per schema change instead of before every query.
# Safe because django-tenants forgets the setting on close and rollback.
TENANT_LIMIT_SET_CALLS = True
PUBLIC_DOMAIN = env_str("PUBLIC_DOMAIN", "localhost")

MIDDLEWARE = [
    "apps.tenants.middleware.TenantResolutionMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "aiplatform.urls_tenant"
PUBLIC_SCHEMA_URLCONF = "aiplatform.urls_public"
ASGI_APPLICATION = "aiplatform.asgi.application"
WSGI_APPLICATION = "aiplatform.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database: django-tenants backend over psycopg 3 with Django's connection pool,
# so a worker with 32 threads or an ASGI web process does not open a connection per
# request (connecting costs milliseconds; a pooled checkout costs microseconds).
DATABASE_URL = env_url("DATABASE_URL", schemes=("postgres", "postgresql"))
DATABASES = {"default": database_from_url("DATABASE_URL", DATABASE_URL)}
DATABASES["default"]["OPTIONS"] = {
    "pool": {
        "min_size": env_int("DB_POOL_MIN_SIZE", 2, minimum=0),
        "max_size": env_int("DB_POOL_MAX_SIZE", 20, minimum=1),
        # Wait at most this long for a free connection before failing the request.
        "timeout": env_int("DB_POOL_TIMEOUT", 10, minimum=1),
    },
}
DATABASE_ROUTERS = ("django_tenants.routers.TenantSyncRouter",)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / ".staticfiles"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}

# --- Redis (Valkey in development): broker and, in later issues, the hot paths.
REDIS_URL = env_url("REDIS_URL", schemes=("redis", "rediss", "unix"))

# --- REST API
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["apps.accounts.authentication.ApiKeyAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["apps.core.parsers.StrictJSONParser"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "apps.core.errors.exception_handler",
    "UNAUTHENTICATED_USER": None,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "AI Platform API",
    "DESCRIPTION": "Submit LLM jobs that Celery workers run; poll them by id.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "apps.jobs.openapi.add_async_views",  # /v1 chat and embeddings, job events: not DRF views
    ],
}

# Redis connections per process pool (the job relay, the broker's commands). A
# caller that finds them all busy waits (up to 10 s) rather than failing.
REDIS_MAX_CONNECTIONS = env_int("REDIS_MAX_CONNECTIONS", 100, minimum=4)

# Threads per web process that run the API's sync views (see aiplatform/asgi.py).
# Requests mostly wait on Postgres and Redis, so more threads than cores pay off;
# keep DB_POOL_MAX_SIZE at least this large.
WEB_THREADS = env_int("WEB_THREADS", 16, minimum=1)

# Largest request body accepted: a prompt that fills a 1M-token context is ~4 MB.
DATA_UPLOAD_MAX_MEMORY_SIZE = env_int("DATA_UPLOAD_MAX_MEMORY_SIZE", 16 * 1024 * 1024, minimum=1024)

# Answer caches: the exact-match TTL for tenants without a policy, and how long a
# process trusts a tenant's policy (operators' edits apply within it).
CACHE_DEFAULT_TTL_SECONDS = env_int("CACHE_DEFAULT_TTL_SECONDS", 3600, minimum=1)
CACHE_POLICY_CACHE_SECONDS = env_int("CACHE_POLICY_CACHE_SECONDS", 5, minimum=0)
# Exact-cache entries live in a Valkey of their own where one is given (run it with
# `maxmemory` and `maxmemory-policy allkeys-lru`: entries may be evicted, the
# broker, budgets and limits in REDIS_URL never are); by default the main one.
CACHE_REDIS_URL = env_url("CACHE_REDIS_URL", REDIS_URL, schemes=("redis", "rediss", "unix"))
# Most exact entries kept per tenant without a cache policy (a policy sets its own).
CACHE_EXACT_MAX_ENTRIES = env_int("CACHE_EXACT_MAX_ENTRIES", 10_000, minimum=1)
# The main Valkey's memory use (used_memory / maxmemory) at or above this share is
# logged as a warning at each /metrics scrape (and alerted on by Prometheus).
REDIS_MEMORY_WARN_RATIO = env_float("REDIS_MEMORY_WARN_RATIO", 0.8, minimum=0.0)

# Content parts other than text (images, audio, files) in a request: how many a
# request may carry, and the largest one (its JSON, e.g. a base64 data: URL).
CONTENT_MAX_PARTS = env_int("CONTENT_MAX_PARTS", 16, minimum=0)
CONTENT_MAX_PART_BYTES = env_int("CONTENT_MAX_PART_BYTES", 8 * 1024 * 1024, minimum=1024)
# Feature flags are re-checked against the Redis version this often per process (a
# save anywhere reaches every process within it).
FLAG_CACHE_SECONDS = env_float("FLAG_CACHE_SECONDS", 2.0, minimum=0.0)
# Fallback policies (tier and tenant chains) are trusted this long per process.
FALLBACK_POLICY_CACHE_SECONDS = env_int("FALLBACK_POLICY_CACHE_SECONDS", 5, minimum=0)
# Semantic cache: HNSW candidates per lookup (recall vs latency), and how long a
# worker waits for the embedder before calling the model without the cache.
SEMANTIC_EF_SEARCH = env_int("SEMANTIC_EF_SEARCH", 100, minimum=1)
EMBEDDER_TIMEOUT_SECONDS = env_int("EMBEDDER_TIMEOUT_SECONDS", 10, minimum=1)
# Threads onnxruntime uses per embedding with the built-in CPU embedder (per process).
LOCAL_EMBEDDER_THREADS = env_int("LOCAL_EMBEDDER_THREADS", 1, minimum=1)

# Where `make install` puts tiktoken's o200k_base ranks (devtools/fetch_tokenizers.py).
TOKENIZER_DIR = env_str("TOKENIZER_DIR", str(BASE_DIR / "var" / "tiktoken"))

# --- Jobs
# An Idempotency-Key is honoured for this long (the window Stripe and others use).
IDEMPOTENCY_WINDOW_SECONDS = env_int("IDEMPOTENCY_WINDOW_SECONDS", 24 * 3600, minimum=60)
# How long a process trusts an authenticated key before checking Postgres again:
# revocation reaches every process within this many seconds.
API_KEY_CACHE_SECONDS = env_int("API_KEY_CACHE_SECONDS", 5, minimum=0)
# Catalog rows are read on every submission; operators' edits apply within this.
CATALOG_CACHE_SECONDS = env_int("CATALOG_CACHE_SECONDS", 5, minimum=0)
# Budget limits (not the counters, which are atomic in Redis) are cached this long
# per user: an edited limit takes effect within it.
BUDGET_CACHE_SECONDS = env_int("BUDGET_CACHE_SECONDS", 5, minimum=0)
# A request refused because holds of requests in flight take a budget's room (not
# because the budget is spent) is told to retry after this many seconds.
BUDGET_BUSY_RETRY_SECONDS = env_int("BUDGET_BUSY_RETRY_SECONDS", 2, minimum=1)
# Input tokens of models whose tokenizer we only approximate (any provider but
# OpenAI: counted in a tiktoken encoding) are held at this much more, so the
# provider's own count stays inside the hold.
BUDGET_INPUT_ESTIMATE_MARGIN_PERCENT = env_int("BUDGET_INPUT_ESTIMATE_MARGIN_PERCENT", 25, minimum=0)
# Active kill switches are read from Postgres at most this often per process (a
# flip reaches every process within it; the flipping process at once).
KILL_SWITCH_CACHE_SECONDS = env_int("KILL_SWITCH_CACHE_SECONDS", 2, minimum=0)
# Rate limits (the configured rates; bucket state is always live in Redis).
RATE_LIMIT_CACHE_SECONDS = env_int("RATE_LIMIT_CACHE_SECONDS", 5, minimum=0)
# The Redis that holds the buckets (the platform's by default), and how long an
# admission waits for it before failing closed (or open, for tenants set so).
RATE_LIMIT_REDIS_URL = env_url("RATE_LIMIT_REDIS_URL", REDIS_URL, schemes=("redis", "rediss", "unix"))
RATE_LIMIT_REDIS_TIMEOUT_SECONDS = env_float("RATE_LIMIT_REDIS_TIMEOUT_SECONDS", 1.0, minimum=0.05)
# Provider call timeout. The task's soft limit sits above it so a slow provider
# fails the job cleanly instead of being killed.
LLM_REQUEST_TIMEOUT_SECONDS = env_int("LLM_REQUEST_TIMEOUT_SECONDS", 120, minimum=1)
# Retries of a provider call that failed for the provider's reasons (5xx, 429,
# timeouts, no connection): how many, and the exponential backoff with full jitter
# (a provider's Retry-After is honoured when longer). No attempt starts after the
# job's deadline (from its start), so a job runs at most the deadline plus one call.
LLM_MAX_RETRIES = env_int("LLM_MAX_RETRIES", 2, minimum=0)
LLM_RETRY_BASE_SECONDS = env_float("LLM_RETRY_BASE_SECONDS", 0.5, minimum=0.0)
LLM_RETRY_MAX_SECONDS = env_float("LLM_RETRY_MAX_SECONDS", 8.0, minimum=0.0)
# Three calls' worth by default: a call that hangs until its timeout still leaves
# time for a retry or the next model in the chain.
JOB_DEADLINE_SECONDS = env_int("JOB_DEADLINE_SECONDS", 3 * LLM_REQUEST_TIMEOUT_SECONDS, minimum=1)
# A catalog model may set its own deadline (`job_timeout_seconds`: reasoning models
# think for minutes), up to this; the task limits, claim leases and the broker's
# visibility timeout are sized from it.
JOB_TIMEOUT_MAX_SECONDS = env_int("JOB_TIMEOUT_MAX_SECONDS", max(3600, JOB_DEADLINE_SECONDS), minimum=1)
# A settlement that Redis refused (after the charge is in the ledger) is retried
# for this long before the job is left to the budget sweep, which settles it from
# the job's recorded cost.
BUDGET_SETTLE_RETRY_SECONDS = env_float("BUDGET_SETTLE_RETRY_SECONDS", 30.0, minimum=0.0)
# How often a running provider call looks for its job's cancel flag (one Redis
# round trip per worker process for all its calls) and its deadline.
JOB_STOP_CHECK_SECONDS = env_float("JOB_STOP_CHECK_SECONDS", 0.5, minimum=0.05)
# Circuit breakers per model (apps/llm/breaker.py), shared through Redis.
BREAKER_FAILURES = env_int("BREAKER_FAILURES", 5, minimum=1)
BREAKER_FAILURE_RATIO = env_float("BREAKER_FAILURE_RATIO", 0.5, minimum=0.0)
BREAKER_WINDOW_SECONDS = env_int("BREAKER_WINDOW_SECONDS", 30, minimum=1)
BREAKER_COOLDOWN_SECONDS = env_int("BREAKER_COOLDOWN_SECONDS", 30, minimum=1)
# A job queued this long with no worker claiming it is re-sent by the sweeper
# (its message may have been lost with Redis).
JOB_REQUEUE_AFTER_SECONDS = env_int("JOB_REQUEUE_AFTER_SECONDS", 300, minimum=30)
# Heartbeats (apps/jobs/heartbeat.py): a claimed job's lease lasts JOB_LEASE_SECONDS
# and its worker renews it every JOB_HEARTBEAT_SECONDS; the lease sweep (beat, every
# JOB_LEASE_SWEEP_SECONDS) re-sends the jobs whose lease ran out. A worker's death is
# noticed within lease + sweep seconds (20 s by default) and its jobs start over.
JOB_LEASE_SECONDS = env_int("JOB_LEASE_SECONDS", 15, minimum=3)
JOB_HEARTBEAT_SECONDS = env_float("JOB_HEARTBEAT_SECONDS", 5.0, minimum=0.2)
if JOB_HEARTBEAT_SECONDS * 2 > JOB_LEASE_SECONDS:
    raise ImproperlyConfigured("JOB_HEARTBEAT_SECONDS must be at most half of JOB_LEASE_SECONDS.")
JOB_LEASE_SWEEP_SECONDS = env_float("JOB_LEASE_SWEEP_SECONDS", 5.0, minimum=0.5)
# A worker told to stop (SIGTERM: a warm shutdown) takes no new jobs, lets its running
# calls finish for this long, then hands the rest back at once (re-sent, started over).
JOB_SHUTDOWN_GRACE_SECONDS = env_float("JOB_SHUTDOWN_GRACE_SECONDS", 20.0, minimum=0.0)

# Job event streams (Redis Streams, one per job; see apps/jobs/events.py).
# Deltas are merged into at most one entry per this many ms per job.
JOB_STREAM_COALESCE_MS = env_int("JOB_STREAM_COALESCE_MS", 25, minimum=0)
# Cap per stream: a long answer still fits (entries are coalesced), memory is bounded.
JOB_STREAM_MAXLEN = env_int("JOB_STREAM_MAXLEN", 2000, minimum=10)
# A finished job's stream is kept this long for late listeners; then Postgres serves it.
JOB_STREAM_TTL_SECONDS = env_int("JOB_STREAM_TTL_SECONDS", 3600, minimum=1)
# A comment line this often keeps idle SSE connections (and proxies) from timing out.
SSE_HEARTBEAT_SECONDS = env_int("SSE_HEARTBEAT_SECONDS", 15, minimum=1)

# A non-stream /v1/chat/completions waits this long for its job, then answers 504
# with the job id (x-aip-job-id) and `x-should-retry: false`, so the client can poll
# the async API. Below the openai SDKs' default 600 s timeout: a client that timed
# out first would retry and start a second job.
V1_WAIT_TIMEOUT_SECONDS = env_int("V1_WAIT_TIMEOUT_SECONDS", 540, minimum=1)
# A /v1 stream its client closes before the end cancels its job (a chat UI's Stop
# button stops the spending); the jobs API's event streams never do.
V1_CANCEL_ON_DISCONNECT = env_bool("V1_CANCEL_ON_DISCONNECT", True)

# The HTTP edge (aiplatform/asgi.py, apps/jobs/leases.py).
# Largest JSON body the API takes (413 request_too_large above it, refused before
# it is read); a route may get its own limit in asgi.BODY_LIMITS.
API_MAX_BODY_BYTES = env_int("API_MAX_BODY_BYTES", DATA_UPLOAD_MAX_MEMORY_SIZE, minimum=1024)
# Open long-lived connections (SSE job streams, streaming /v1 chat completions,
# non-stream /v1 waits) per API key and per tenant; above them 429 too_many_streams.
STREAMS_PER_KEY = env_int("STREAMS_PER_KEY", 50, minimum=1)
STREAMS_PER_TENANT = env_int("STREAMS_PER_TENANT", 500, minimum=1)
# A connection's slot is renewed every SSE_HEARTBEAT_SECONDS; one whose web process
# died frees after this long (at least three heartbeats).
STREAM_LEASE_SECONDS = env_int("STREAM_LEASE_SECONDS", 60, minimum=5)

# Completion webhooks (apps/jobs/webhooks.py). One deadline for a whole delivery
# (connect, TLS, request, the answer's headers).
WEBHOOK_TIMEOUT_SECONDS = env_int("WEBHOOK_TIMEOUT_SECONDS", 10, minimum=1)
# The longest a webhook host's DNS lookup may take (at submission, in a web thread).
WEBHOOK_DNS_TIMEOUT_SECONDS = env_int("WEBHOOK_DNS_TIMEOUT_SECONDS", 2, minimum=1)
# 8 attempts with a 5 s base: the last one about 10 minutes after the first.
WEBHOOK_MAX_ATTEMPTS = env_int("WEBHOOK_MAX_ATTEMPTS", 8, minimum=1)
WEBHOOK_RETRY_BASE_SECONDS: float = env_int("WEBHOOK_RETRY_BASE_SECONDS", 5, minimum=0)
# Non-public networks webhooks may still target (CIDRs), e.g. "10.0.0.0/8" for an
# internal receiver. Empty: only public addresses.
WEBHOOK_ALLOWED_NETWORKS = env_list("WEBHOOK_ALLOWED_NETWORKS", [])

# --- Celery (read by aiplatform/celery.py with namespace CELERY_)
CELERY_BROKER_URL = env_url("CELERY_BROKER_URL", REDIS_URL, schemes=("redis", "rediss", "amqp", "unix"))
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
# Job state lives in Postgres; a result backend would only duplicate it.
CELERY_TASK_IGNORE_RESULT = True
CELERY_RESULT_BACKEND = None
# Ack after the task ran, and requeue if the worker died mid-task: a crash never
# loses a job. Tasks are idempotent, so a redelivery is harmless.
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
# One message per worker thread at a time: a slow provider never hoards jobs
# that another idle worker could start.
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# The hard limit kills a stuck task; the soft limit lets it fail the job first.
# A job runs at most its deadline plus one attempt's timeout; the task limits sit above.
CELERY_TASK_SOFT_TIME_LIMIT = JOB_DEADLINE_SECONDS + LLM_REQUEST_TIMEOUT_SECONDS + 30
CELERY_TASK_TIME_LIMIT = JOB_DEADLINE_SECONDS + LLM_REQUEST_TIMEOUT_SECONDS + 60
# Redis redelivers an unacked message after visibility_timeout: keep it well above
# the hard limit, or a long acks-late job would run twice.
_VISIBILITY_TIMEOUT = (max(JOB_DEADLINE_SECONDS, JOB_TIMEOUT_MAX_SECONDS) + LLM_REQUEST_TIMEOUT_SECONDS + 60) * 2 + 600
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": _VISIBILITY_TIMEOUT}
CELERY_RESULT_BACKEND_TRANSPORT_OPTIONS = {"visibility_timeout": _VISIBILITY_TIMEOUT}
CELERY_VISIBILITY_TIMEOUT = _VISIBILITY_TIMEOUT
CELERY_TASK_DEFAULT_QUEUE = "default"
CELERY_TASK_ROUTES = ("tasks.queues.route_task",)
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
# No `task-sent` event: it would be a second Redis publish on every submission.
# Flower still sees received/started/succeeded from the workers' events.
CELERY_TASK_SEND_SENT_EVENT = False
# Task events cost a broker publish per task state (about a sixth of a worker's CPU
# per job). Off by default; Flower switches them on in the workers while it runs
# (its --enable_events default), and CELERY_TASK_EVENTS=true keeps them on.
CELERY_WORKER_SEND_TASK_EVENTS = env_bool("CELERY_TASK_EVENTS", False)
CELERY_BEAT_SCHEDULE = {
    "jobs-requeue-stale": {
        "task": "jobs.requeue_stale",
        # Once a minute: a lost message costs at most JOB_REQUEUE_AFTER_SECONDS + 60 s.
        "schedule": 60.0,
        "options": {"queue": "default", "expires": 55},
    },
    "jobs-leases-sweep": {
        "task": "jobs.leases_sweep",
        # Cheap: one ZRANGEBYSCORE on the lease index, Postgres only for what expired.
        "schedule": JOB_LEASE_SWEEP_SECONDS,
        "options": {"queue": "default", "expires": max(JOB_LEASE_SWEEP_SECONDS - 0.5, 0.5)},
    },
    "budgets-sweep": {
        "task": "budgets.sweep",
        "schedule": 300.0,
        "options": {"queue": "default", "expires": 290},
    },
    "cache-evict": {
        "task": "cache.evict",
        "schedule": 300.0,
        "options": {"queue": "default", "expires": 290},
    },
    "budgets-reset": {
        "task": "budgets.reset",
        # Just after each UTC midnight (a month also ends at one): clears the kill
        # switches the ended periods' hard limits flipped. Safe to run twice.
        "schedule": crontab(minute="0,30", hour="0"),
        "options": {"queue": "default", "expires": 1500},
    },
}

# GET /metrics requires `Authorization: Bearer <METRICS_TOKEN>` when it is set.
METRICS_TOKEN = env_str("METRICS_TOKEN", "")

# --- Sentry (nothing is sent unless SENTRY_DSN is set)
SENTRY_DSN = env_str("SENTRY_DSN", "")
SENTRY_ENVIRONMENT = env_str("SENTRY_ENVIRONMENT", "development")
init_sentry(dsn=SENTRY_DSN, environment=SENTRY_ENVIRONMENT)

# One line per record, with request_id, job_id, tenant, user and model from the
# bound context (apps/observability/logs.py): JSON in production, a readable line
# in development (settings.dev sets LOG_FORMAT=console).
LOG_FORMAT = env_str("LOG_FORMAT", "json")
if LOG_FORMAT not in ("json", "console"):
    raise ImproperlyConfigured(f"LOG_FORMAT must be json or console, not {LOG_FORMAT!r}.")
LOGGING = logging_config(fmt=LOG_FORMAT, level=env_str("LOG_LEVEL", "INFO"))

EMAIL_BACKEND = env_str("EMAIL_BACKEND", "django.core.mail.backends.console.EmailBackend")
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "aiplatform@localhost")

# Task modules, declared once (a worker imports them all at start).
CELERY_IMPORTS = ("tasks.jobs", "tasks.webhooks", "tasks.alerts", "tasks.budgets", "tasks.cache")
# Workers cache tenant rows by schema instead of querying the public schema per task.
CELERY_TASK_TENANT_CACHE_SECONDS = 60
