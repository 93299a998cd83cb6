"""Configuration that must have taken effect: a misspelt setting is silently ignored."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from aiplatform.celery import app
from aiplatform.settings.env import database_from_url, env_bool, env_int, env_url
from tasks.queues import route_task


def test_celery_reliability_settings_took_effect():
    conf = app.conf
    assert conf.task_serializer == "json"
    assert conf.accept_content == ["json"]
    assert conf.task_acks_late is True
    assert conf.task_reject_on_worker_lost is True
    assert conf.worker_prefetch_multiplier == 1
    assert conf.task_soft_time_limit < conf.task_time_limit
    assert conf.broker_transport_options["visibility_timeout"] > conf.task_time_limit
    assert conf.task_ignore_result is True


def test_job_task_is_routed_by_model_kwarg():
    routed = route_task("jobs.run", (), {"job_id": "x", "model": "gpt-4o"}, {})["queue"]
    assert (routed.name, routed.routing_key, routed.exchange.name) == ("llm.gpt-4o", "llm.gpt-4o", "")
    assert route_task("jobs.requeue_stale", (), {}, {})["queue"].name == "default"
    with pytest.raises(ValueError):
        route_task("jobs.run", ("x",), {}, {})


def test_database_uses_tenant_backend_and_pool():
    db = settings.DATABASES["default"]
    assert db["ENGINE"] == "django_tenants.postgresql_backend"
    assert db["OPTIONS"]["pool"]["max_size"] >= 1


def test_env_helpers_fail_loudly_naming_the_variable(monkeypatch):
    monkeypatch.setenv("AIP_T_INT", "ten")
    with pytest.raises(ImproperlyConfigured, match="AIP_T_INT"):
        env_int("AIP_T_INT", 1)
    monkeypatch.setenv("AIP_T_BOOL", "maybe")
    with pytest.raises(ImproperlyConfigured, match="AIP_T_BOOL"):
        env_bool("AIP_T_BOOL", False)
    monkeypatch.setenv("AIP_T_URL", "localhost:6379")
    with pytest.raises(ImproperlyConfigured, match="AIP_T_URL"):
        env_url("AIP_T_URL", schemes=("redis",))
    monkeypatch.delenv("AIP_T_MISSING", raising=False)
    with pytest.raises(ImproperlyConfigured, match="Set the AIP_T_MISSING"):
        env_url("AIP_T_MISSING", schemes=("redis",))
    with pytest.raises(ImproperlyConfigured, match="DATABASE_URL"):
        database_from_url("DATABASE_URL", "postgres://host:5432/")


def test_production_settings_refuse_to_start_without_required_variables():
    env = {k: v for k, v in os.environ.items() if k not in {"SECRET_KEY", "API_KEY_PEPPER", "DJANGO_SETTINGS_MODULE"}}
    env["DJANGO_SETTINGS_MODULE"] = "aiplatform.settings.prod"
    result = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    assert "Set the SECRET_KEY environment variable" in result.stderr


def test_invalid_sentry_dsn_fails_at_start_naming_the_variable():
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "aiplatform.settings.test", "SENTRY_DSN": "not-a-dsn"}
    result = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    assert "SENTRY_DSN" in result.stderr


def test_redis_broker_uses_our_transport_and_keeps_its_url_scheme():
    from aiplatform.broker import Transport

    with app.connection_for_write() as connection:
        assert isinstance(connection.transport, Transport)
        # Flower picks its broker client (queue lengths) by this scheme.
        assert connection.as_uri().startswith("redis://")
