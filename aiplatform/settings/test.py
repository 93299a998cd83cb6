"""Tests: the embedded services that `make test` starts on their own ports
(see devtools/testenv.py); the URLs arrive through the environment."""

import os

os.environ.setdefault("SECRET_KEY", "test-secret-key")
os.environ.setdefault("API_KEY_PEPPER", "test-api-key-pepper")
os.environ.setdefault("ALLOWED_HOSTS", "*")
os.environ.setdefault("IDEMPOTENCY_WINDOW_SECONDS", "86400")
# Tests revoke keys and edit the catalog, then expect the next request to see it.
os.environ.setdefault("API_KEY_CACHE_SECONDS", "0")
os.environ.setdefault("CATALOG_CACHE_SECONDS", "0")

from .base import *  # noqa: E402,F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
# The in-process test worker runs provider calls with a short timeout.
LLM_REQUEST_TIMEOUT_SECONDS = 10
WHITENOISE_USE_FINDERS = True
STATIC_ROOT = None
