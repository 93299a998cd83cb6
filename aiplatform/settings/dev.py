"""Development: the embedded Postgres and Valkey that `make run` starts, unless the
environment points elsewhere. Never use these defaults in production."""

import os

_PG_PORT = os.environ.get("AIP_PG_PORT", "54329")
_REDIS_PORT = os.environ.get("AIP_REDIS_PORT", "63799")
os.environ.setdefault("SECRET_KEY", "dev-insecure-secret-key-change-me")
os.environ.setdefault("API_KEY_PEPPER", "dev-insecure-api-key-pepper")
os.environ.setdefault("DEBUG", "true")
os.environ.setdefault("LOG_FORMAT", "console")
os.environ.setdefault("ALLOWED_HOSTS", "localhost,.localhost,127.0.0.1")
os.environ.setdefault("DATABASE_URL", f"postgres://postgres@127.0.0.1:{_PG_PORT}/aiplatform")
os.environ.setdefault("REDIS_URL", f"redis://127.0.0.1:{_REDIS_PORT}/0")

from .base import *  # noqa: E402,F403

# Serve static files straight from the apps (no collectstatic in development).
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = True
STATIC_ROOT = None  # type: ignore[assignment]
