from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from apps.tenants.services import tenant_create


class Command(BaseCommand):
    help = "Create a tenant: its schema (migrated) and its domain for the tenant admin."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--schema", required=True, help="Postgres schema name, e.g. acme")
        parser.add_argument("--name", required=True, help='Display name, e.g. "Acme Inc."')
        parser.add_argument("--domain", required=True, help="Admin host name, e.g. acme.localhost")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            tenant = tenant_create(schema_name=options["schema"], name=options["name"], domain=options["domain"])
        except (ValueError, ValidationError) as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(self.style.SUCCESS(f"Created tenant {tenant.schema_name} at {options['domain']}"))
