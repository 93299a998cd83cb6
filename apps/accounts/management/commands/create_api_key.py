from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django_tenants.utils import tenant_context

from apps.accounts.models import Tier
from apps.accounts.services import api_key_create, user_get_or_create
from apps.tenants.models import Tenant


class Command(BaseCommand):
    help = "Create an API key for a tenant's user (creating the user if needed). Prints the key once."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--tenant", required=True, help="Tenant schema name")
        parser.add_argument("--email", required=True)
        parser.add_argument("--tier", choices=Tier.values, help="Set the user's tier (default for new users: standard)")
        parser.add_argument("--name", default="", help="A label for the key")
        parser.add_argument("--admin", action="store_true", help="A tenant admin key (reads the tenant's usage)")

    def handle(self, *args: Any, **options: Any) -> None:
        tenant = Tenant.objects.filter(schema_name=options["tenant"]).exclude(schema_name="public").first()
        if tenant is None:
            raise CommandError(f"No tenant with schema {options['tenant']!r}.")
        with tenant_context(tenant):
            user, created = user_get_or_create(email=options["email"], tier=options["tier"])
            _, raw = api_key_create(user=user, name=options["name"], is_admin=options["admin"])
        verb = "Created user" if created else "User"
        self.stdout.write(f"{verb} {user.email} ({user.tier}) in {tenant.schema_name}.")
        self.stdout.write("API key (shown once, store it now):")
        self.stdout.write(raw)
