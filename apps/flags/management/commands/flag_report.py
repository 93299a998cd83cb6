"""Compare a flag's cohorts: jobs per variant and model, how they ended, provider
latency and cost, per tenant.

manage.py flag_report KEY [--tenant S] [--since YYYY-MM-DD] [--format table|json]
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone
from django_tenants.utils import tenant_context

from apps.billing.money import format_usd
from apps.flags.selectors import flag_cohorts
from apps.tenants.models import Tenant

COLUMNS = (
    "tenant",
    "variant",
    "model",
    "jobs",
    "succeeded",
    "failed",
    "error_rate",
    "latency_p50_ms",
    "latency_p95_ms",
    "cost_usd",
)


class Command(BaseCommand):
    help = "A flag's cohorts side by side: jobs, outcomes, latency and cost per variant."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("key", help="the flag's key")
        parser.add_argument("--tenant", help="schema name (default: every tenant)")
        parser.add_argument("--since", help="YYYY-MM-DD, UTC (default: 7 days ago)")
        parser.add_argument("--format", choices=["table", "json"], default="table")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            since = (
                datetime.fromisoformat(options["since"]).replace(tzinfo=UTC)
                if options["since"]
                else timezone.now() - timedelta(days=7)
            )
        except ValueError as exc:
            raise CommandError(f"--since must be YYYY-MM-DD: {exc}") from exc
        tenants = Tenant.objects.exclude(schema_name="public").order_by("schema_name")
        if options["tenant"]:
            tenants = tenants.filter(schema_name=options["tenant"])
            if not tenants.exists():
                raise CommandError(f"No tenant {options['tenant']!r}.")
        rows: list[dict[str, Any]] = []
        for tenant in tenants:
            with tenant_context(tenant):
                for row in flag_cohorts(key=options["key"], since=since):
                    rows.append({"tenant": tenant.schema_name, **row, "cost_usd": format_usd(row["cost_micros"])})
        if options["format"] == "json":
            self.stdout.write(json.dumps({"flag": options["key"], "since": since.isoformat(), "rows": rows}, indent=2))
            return
        widths = [max(len(c), *(len(str(r[c])) for r in rows)) if rows else len(c) for c in COLUMNS]
        self.stdout.write("  ".join(c.ljust(w) for c, w in zip(COLUMNS, widths, strict=True)))
        for row in rows:
            self.stdout.write("  ".join(str(row[c]).ljust(w) for c, w in zip(COLUMNS, widths, strict=True)))
