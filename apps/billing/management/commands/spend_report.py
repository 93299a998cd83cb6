"""Spend from the tenants' ledgers.

manage.py spend_report [--tenant S] [--since YYYY-MM-DD] [--by user|model|day] [--format table|csv|json]
"""

from __future__ import annotations

import csv
import json
from datetime import date, timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone
from django_tenants.utils import tenant_context

from apps.billing.money import format_usd
from apps.billing.selectors import GROUPS, usage_summary
from apps.tenants.models import Tenant

COLUMNS = ("calls", "cached_calls", "input_tokens", "output_tokens", "cost_usd", "cost_micros", "saved_micros")


class Command(BaseCommand):
    help = "Spend per user, model or day, from the ledger of one tenant or all."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--tenant", help="schema name (default: every tenant)")
        parser.add_argument("--since", help="YYYY-MM-DD, UTC (default: 30 days ago)")
        parser.add_argument("--by", choices=sorted(GROUPS), default="day")
        parser.add_argument("--format", choices=["table", "csv", "json"], default="table")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            since = date.fromisoformat(options["since"]) if options["since"] else None
        except ValueError as exc:
            raise CommandError(f"--since must be YYYY-MM-DD: {exc}") from exc
        since = since or (timezone.now() - timedelta(days=30)).date()
        tenants = Tenant.objects.exclude(schema_name="public").order_by("schema_name")
        if options["tenant"]:
            tenants = tenants.filter(schema_name=options["tenant"])
            if not tenants.exists():
                raise CommandError(f"No tenant {options['tenant']!r}.")
        by = options["by"]
        rows = []
        for tenant in tenants:
            with tenant_context(tenant):
                rows += [{"tenant": tenant.schema_name, **row} for row in usage_summary(since=since, group_by=by)]
        header = ("tenant", by, *COLUMNS)
        if options["format"] == "json":
            self.stdout.write(json.dumps({"since": since.isoformat(), "by": by, "rows": rows}, indent=2))
        elif options["format"] == "csv":
            writer = csv.writer(self.stdout)
            writer.writerow(header)
            for row in rows:
                writer.writerow([row[column] for column in header])
        else:
            widths = [max(len(str(c)), *(len(str(r[c])) for r in rows)) if rows else len(c) for c in header]
            self.stdout.write("  ".join(c.ljust(w) for c, w in zip(header, widths, strict=True)))
            for row in rows:
                self.stdout.write("  ".join(str(row[c]).ljust(w) for c, w in zip(header, widths, strict=True)))
            total = sum(row["cost_micros"] for row in rows)
            self.stdout.write(f"total since {since.isoformat()}: {format_usd(total)}")
