"""Close budget periods: clear the automatic kill switches (hard limits reached)
whose period has ended, and print what the closed period spent. Safe to run
twice. Beat runs it just after midnight UTC (tasks/budgets.py).

    manage.py reset_budgets [--period day|month] [--tenant S] [--user EMAIL] [--dry-run]
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from apps.billing.periods import periods_close
from apps.controls.models import Period


class Command(BaseCommand):
    help = "Close ended budget periods: clear the kill switches they caused and report their spend."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--period", choices=Period.values, help="only this kind of period (default: both)")
        parser.add_argument("--tenant", help="only this tenant (schema name)")
        parser.add_argument("--user", help="only this user's switches (email)")
        parser.add_argument("--dry-run", action="store_true", help="say what would be done, change nothing")

    def handle(self, *args: Any, **options: Any) -> None:
        for line in periods_close(
            period=options["period"],
            tenant_schema=options["tenant"],
            user_email=options["user"],
            dry_run=options["dry_run"],
            actor="command:reset_budgets",
        ):
            self.stdout.write(line)
