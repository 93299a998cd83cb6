"""Tests: the embedded services that `make test` starts on their own ports
(see devtools/testenv.py); the URLs arrive through the environment."""

import os

# `make test` exports the URLs of the services it started; these defaults are
# the ports it uses, so a plain `pytest` works while they run.
os.environ.setdefault(
    "DATABASE_URL", f"postgres://postgres@127.0.0.1:{os.environ.get('AIP_TEST_PG_PORT', '54339')}/aiplatform"
)
os.environ.setdefault("REDIS_URL", f"redis://127.0.0.1:{os.environ.get('AIP_TEST_REDIS_PORT', '63809')}/0")
os.environ.setdefault("SECRET_KEY", "test-secret-key")
os.environ.setdefault("API_KEY_PEPPER", "test-api-key-pepper")
os.environ.setdefault("ALLOWED_HOSTS", "*")
# Django's test client sends Host: testserver; the operator admin answers there only.
os.environ.setdefault("PUBLIC_DOMAIN", "testserver")
os.environ.setdefault("LOG_FORMAT", "console")
os.environ.setdefault("IDEMPOTENCY_WINDOW_SECONDS", "86400")
# Tests revoke keys and edit the catalog, then expect the next request to see it.
os.environ.setdefault("API_KEY_CACHE_SECONDS", "0")
os.environ.setdefault("CATALOG_CACHE_SECONDS", "0")
os.environ.setdefault("BUDGET_CACHE_SECONDS", "0")
os.environ.setdefault("KILL_SWITCH_CACHE_SECONDS", "0")
os.environ.setdefault("RATE_LIMIT_CACHE_SECONDS", "0")
os.environ.setdefault("CACHE_POLICY_CACHE_SECONDS", "0")
os.environ.setdefault("FALLBACK_POLICY_CACHE_SECONDS", "0")
os.environ.setdefault("FLAG_CACHE_SECONDS", "0")
# A failing provider fails the job at once, and breakers never trip, unless a
# test asks for retries or breakers (tests of other things inject faults too).
os.environ.setdefault("LLM_MAX_RETRIES", "0")
os.environ.setdefault("BREAKER_FAILURES", "1000")

from .base import *  # noqa: F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
# The in-process test worker runs provider calls with a short timeout.
LLM_REQUEST_TIMEOUT_SECONDS = 10
WHITENOISE_USE_FINDERS = True
STATIC_ROOT = None  # type: ignore[assignment]
# Tests run their webhook receivers on loopback, and retry fast.
WEBHOOK_ALLOWED_NETWORKS = ["127.0.0.0/8"]
WEBHOOK_RETRY_BASE_SECONDS = 0.2
