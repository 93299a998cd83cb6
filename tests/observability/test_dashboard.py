"""The Grafana dashboard and the Prometheus config in docker/ plot and scrape what
the platform really exports: every metric a panel queries is one the web's
/metrics or a worker serves (a renamed metric would leave a panel empty)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml
from django.test import Client

from apps.observability import metrics
from tests.support import Personas, metric_samples

DOCKER = Path(__file__).resolve().parents[2] / "docker"
PROMQL_WORDS = {"sum", "by", "rate", "max", "histogram_quantile", "le", "without", "on", "ignoring"}


def _queried(expr: str) -> set[str]:
    """Metric names in a PromQL expression (not functions, labels or label values)."""
    expr = re.sub(r'"[^"]*"', "", expr)  # label values
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges
    expr = re.sub(r"by \([^)]*\)", "", expr)  # grouping labels
    expr = re.sub(r"\{[^}]*\}", "", expr)  # matchers
    return {word for word in re.findall(r"[a-z_][a-z0-9_]*", expr) if word not in PROMQL_WORDS}


def _exported(committed_personas: Personas) -> set[str]:
    page = Client().get("/metrics").content.decode()  # the shared series (breakers, queues...)
    names = {name for name, _ in metric_samples(page)}
    for family in metrics.REGISTRY.collect():  # every process's own, recorded or not yet
        base = family.name
        if family.type == "histogram":
            names |= {f"{base}_bucket", f"{base}_sum", f"{base}_count"}
        elif family.type == "counter":
            names.add(f"{base}_total")
        else:
            names.add(base)
    return names


def test_every_panel_queries_metrics_the_platform_exports(committed_personas: Personas):
    dashboard = json.loads((DOCKER / "grafana/dashboards/aiplatform.json").read_text())
    exported = _exported(committed_personas)
    queried: set[str] = set()
    for panel in dashboard["panels"]:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            queried |= _queried(target["expr"])
    assert queried, "no metric found in the dashboard"
    assert queried <= exported, f"panels query metrics nobody exports: {sorted(queried - exported)}"
    # And the list is on it: cost per tenant, tokens, duration, first chunk, jobs,
    # cache, fallbacks, rejections, breakers, queue depth, in flight.
    for name in (
        "aip_cost_usd_total",
        "gen_ai_client_token_usage_sum",
        "gen_ai_client_operation_duration_seconds_bucket",
        "gen_ai_client_operation_time_to_first_chunk_seconds_bucket",
        "aip_jobs_total",
        "aip_cache_requests_total",
        "aip_fallbacks_total",
        "aip_ratelimit_rejections_total",
        "aip_budget_rejections_total",
        "aip_circuit_breaker_state",
        "aip_queue_depth",
        "aip_jobs_in_flight",
    ):
        assert name in queried, name


def test_compose_runs_prometheus_and_grafana_under_a_profile_and_scrapes_every_worker():
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    services = compose["services"]
    assert services["prometheus"]["profiles"] == ["observability"]
    assert services["grafana"]["profiles"] == ["observability"]
    config = yaml.safe_load((DOCKER / "prometheus/prometheus.yml").read_text())
    targets = {
        target for job in config["scrape_configs"] for group in job["static_configs"] for target in group["targets"]
    }
    workers = {name for name in services if name == "worker" or name.startswith("worker-")}
    assert targets == {"web:8000"} | {f"{name}:9400" for name in workers}
    assert "PROMETHEUS_MULTIPROC_DIR" in " ".join(services["web"]["command"])
